"""One result type for every sampler: :class:`SliceSegmentation`, NumPy only (issue 17)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from spinesegdiff.pipelines.backends.numpy_sampler import presegmentation_summary
from spinesegdiff.pipelines.results import ARRAY_FIELDS, SliceSegmentation, concatenate_segmentations


def _part(first: int, count: int, calls: int) -> SliceSegmentation:
    """``count`` 2 x 2 slices whose every array holds its slice numbers ``first .. first + count - 1``."""
    numbers = np.arange(first, first + count, dtype=np.float32)
    return SliceSegmentation(
        probabilities=np.broadcast_to(numbers[:, None, None, None], (count, 3, 2, 2)).copy(),
        class_probabilities=np.broadcast_to(numbers[:, None, None, None], (count, 4, 2, 2)).copy(),
        labels=np.broadcast_to(numbers[:, None, None], (count, 2, 2)).astype(np.uint8),
        uncertainty=np.broadcast_to(numbers[:, None, None], (count, 2, 2)).copy(),
        structure_uncertainty=np.broadcast_to(numbers[:, None, None, None], (count, 3, 2, 2)).copy(),
        variance=np.broadcast_to(numbers[:, None, None, None], (count, 3, 2, 2)).copy(),
        network_calls=calls)


def test_concatenating_keeps_the_slice_order_and_sums_the_network_calls() -> None:
    joined = concatenate_segmentations([_part(0, 2, 3), _part(2, 1, 4)])
    whole = _part(0, 3, 7)
    assert joined.network_calls == 7
    for name in ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(joined, name), getattr(whole, name), err_msg=name)
        assert getattr(joined, name).dtype == getattr(whole, name).dtype, name
    assert set(ARRAY_FIELDS) == {"probabilities", "class_probabilities", "labels", "uncertainty",
                                 "structure_uncertainty", "variance"}
    with pytest.raises(ValueError, match="at least one part"):
        concatenate_segmentations([])


def test_a_presegmentation_is_a_slice_segmentation() -> None:
    probs = np.zeros((2, 4, 3, 3), dtype=np.float32)
    probs[:, 2] = 1.0  # vertebra everywhere, certain
    result = presegmentation_summary(probs)
    assert type(result) is SliceSegmentation and result.network_calls == 0
    assert result.labels.dtype == np.uint8 and (result.labels == 2).all()
    assert result.probabilities.shape == (2, 3, 3, 3) and result.uncertainty.max() == 0.0


def test_the_result_type_is_usable_without_torch() -> None:
    script = ("import sys; from spinesegdiff.pipelines.results import SliceSegmentation; "
              "from spinesegdiff.pipelines.backends import numpy_sampler; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
