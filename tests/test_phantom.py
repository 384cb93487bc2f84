from __future__ import annotations

import numpy as np
import pytest

from spinesegdiff.data.labels import DISC, SPINAL_CANAL, VERTEBRA
from spinesegdiff.data.phantom import make_phantom, phantom_batch


def _mean(phantom, cls: int) -> float:
    return float(phantom.image[phantom.labels == cls].mean())


def test_phantom_has_every_structure_and_a_sagittal_geometry() -> None:
    phantom = make_phantom(seed=3)
    assert phantom.image.shape == phantom.labels.shape == (5, 256, 200)
    assert phantom.image.dtype == np.float32 and phantom.image.min() >= 0 and phantom.image.max() <= 1
    assert set(np.unique(phantom.labels[2])) == {0, 1, 2, 3}
    assert phantom.geometry.spacing == (1.2, 1.2, 3.0)


def test_t1_and_t2_contrast_order() -> None:
    t2 = make_phantom(contrast="T2", seed=1, noise=0.01)
    t1 = make_phantom(contrast="T1", seed=1, noise=0.01)
    np.testing.assert_array_equal(t1.labels, t2.labels)
    assert _mean(t2, DISC) > _mean(t2, VERTEBRA) and _mean(t2, SPINAL_CANAL) > _mean(t2, VERTEBRA)
    assert _mean(t1, DISC) < _mean(t1, VERTEBRA) and _mean(t1, SPINAL_CANAL) < _mean(t1, VERTEBRA)
    with pytest.raises(ValueError, match="contrast must be"):
        make_phantom(contrast="PD")


def test_pathologies_change_the_anatomy() -> None:
    healthy = make_phantom(seed=5)
    narrowed = make_phantom(seed=5, narrowed_disc=2)
    slipped = make_phantom(seed=5, slipped_vertebra=3)
    assert (narrowed.labels == DISC).sum() < (healthy.labels == DISC).sum()
    assert not np.array_equal(slipped.labels, healthy.labels)
    assert (slipped.labels == VERTEBRA).sum() == pytest.approx((healthy.labels == VERTEBRA).sum(), rel=0.1)


def test_seeded_and_batch() -> None:
    np.testing.assert_array_equal(make_phantom(seed=9).image, make_phantom(seed=9).image)
    assert not np.array_equal(make_phantom(seed=9).image, make_phantom(seed=10).image)
    images, labels = phantom_batch(4, size=32, contrast="mixed")
    assert images.shape == (4, 32, 32) and labels.shape == (4, 32, 32)
    assert images.min() >= -1 and images.max() <= 1
