"""A scan smaller than the model grid: what the networks draw in the padding around it is not in the scan.

Before 2026-11-29 (session 13) the slice choice, the clean-up and the quality check judged the padding too: on the
real TPTBox sample (102 x 78 mm, 1.5 mm) the U-Net's vertebrae and discs in the padding made a lateral slice at
the edge of the search "the mid-sagittal one" (Dice 0 there), and the check called the result a whole spine.
"""

from __future__ import annotations

import numpy as np
import pytest

from spinesegdiff.data.io import Geometry, read_image
from spinesegdiff.data.preprocess import field_of_view_mask, plan_grid, restore_probabilities
from spinesegdiff.pipelines.results import SliceSegmentation, cleared_outside

PIR = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


@pytest.mark.parametrize(("shape", "spacing"), [((5, 60, 40), (1.5, 1.5, 3.0)),   # a small crop
                                                ((9, 640, 512), (0.47, 0.47, 3.3)),  # a SPIDER series
                                                ((3, 400, 400), (0.9, 0.9, 4.0))])  # larger than 320 mm
def test_the_restored_slice_reads_only_the_mask(shape, spacing):
    grid = plan_grid(shape, Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0), direction=PIR),
                     cover_field_of_view=True)
    inside = field_of_view_mask(grid)
    rng = np.random.default_rng(0)
    maps = rng.random((4, grid.rows.model_size, grid.cols.model_size)).astype(np.float32)
    changed = maps.copy()
    changed[:, ~inside] = rng.random((4, int((~inside).sum())))
    np.testing.assert_array_equal(restore_probabilities(changed, grid), restore_probabilities(maps, grid))
    # and the mask is no larger than that: one pixel in from its edge, the restore reads it
    rows, cols = np.nonzero(inside)
    for row, col in ((rows.min(), cols.min()), (rows.max(), cols.max())):
        poked = maps.copy()
        poked[:, row, col] += 1.0
        assert not np.array_equal(restore_probabilities(poked, grid), restore_probabilities(maps, grid))


def test_cleared_outside_is_certain_background_there():
    inside = np.zeros((4, 4), bool)
    inside[1:3, 1:3] = True
    rng = np.random.default_rng(1)
    class_probabilities = rng.dirichlet(np.ones(4), size=(2, 4, 4)).transpose(0, 3, 1, 2).astype(np.float32)
    segmentation = SliceSegmentation(
        probabilities=rng.random((2, 3, 4, 4)).astype(np.float32), class_probabilities=class_probabilities,
        labels=class_probabilities.argmax(axis=1).astype(np.uint8), uncertainty=rng.random((2, 4, 4)),
        structure_uncertainty=rng.random((2, 3, 4, 4)), variance=rng.random((2, 3, 4, 4)), network_calls=3)
    cleared = cleared_outside(segmentation, inside)
    assert (cleared.class_probabilities[:, 0][:, ~inside] == 1).all()
    assert not cleared.class_probabilities[:, 1:][..., ~inside].any() and not cleared.labels[:, ~inside].any()
    for name in ("probabilities", "uncertainty", "structure_uncertainty", "variance"):
        assert not getattr(cleared, name)[..., ~inside].any(), name
        np.testing.assert_array_equal(getattr(cleared, name)[..., inside], getattr(segmentation, name)[..., inside])
    assert cleared.network_calls == 3 and segmentation.labels[:, ~inside].any()  # the input is left as it was


def test_the_tptbox_crop_is_segmented_on_its_midline(tptbox_sample):
    """The real TPTBox sample (Apache-2.0): its reference's canal is widest on slice 32 (along R)."""
    from spinesegdiff.pipelines.checks import QualityWarning
    from spinesegdiff.pipelines.predict import segment

    with pytest.warns(QualityWarning, match="does not look like a whole lumbar spine"):  # three levels, no more
        result = segment(tptbox_sample / "sub-mri_label-6_T2w.nii.gz", device="cpu", quiet=True)
    vertebrae, _ = read_image(tptbox_sample / "sub-mri_seg-vert_label-6_msk.nii.gz")
    regions, _ = read_image(tptbox_sample / "sub-mri_seg-subreg_label-6_msk.nii.gz")
    [index] = result.prepared.indices
    assert abs(index - 32) <= 2, f"slice {index} chosen"
    canal = np.isin(regions[index], [60, 61])  # spinal cord and canal; R is the first array axis (PIR)
    predicted = result.labels[index] == 1
    assert 2 * (canal & predicted).sum() / (canal.sum() + predicted.sum()) > 0.8
    bone = (vertebrae[index] > 0) & (vertebrae[index] < 100)
    assert 2 * (bone & (result.labels[index] == 2)).sum() / (bone.sum() + (result.labels[index] == 2).sum()) > 0.6
