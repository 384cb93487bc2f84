"""``predict --labels spider`` (issue 15): SPIDER's instance codes, levels named from the sacrum up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from levels_phantoms import spine_slice
from spinesegdiff.data.io import Geometry, read_image
from spinesegdiff.data.preprocess import plan_grid
from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.pipelines.label_convention import (
    UNNAMED_DISC,
    UNNAMED_VERTEBRA,
    spider_label_map,
    spider_value_names,
)
from spinesegdiff.pipelines.predict import check_label_convention


def _volume(slice_labels: np.ndarray, copies: int = 3) -> tuple[np.ndarray, object]:
    """A ``(copies, rows, cols)`` PIR volume (SimpleITK order) whose sagittal slices are all ``slice_labels``
    (rows superior to inferior, columns anterior to posterior, 0.5 x 0.6 mm)."""
    geometry = Geometry(spacing=(0.6, 0.5, 1.0), origin=(0.0, 0.0, 0.0),
                        direction=(0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    volume = np.repeat(slice_labels[None], copies, axis=0)
    return volume, plan_grid(volume.shape, geometry)


def test_levels_get_spiders_codes_from_l5_and_l5_s1_up() -> None:
    phantom = spine_slice(bodies=5, lowest="disc")  # five lumbar bodies above the L5-S1 disc
    volume, grid = _volume(phantom.labels)
    codes = spider_label_map(volume, grid, [1])
    assert codes.dtype == np.uint16 and not codes[0].any() and not codes[2].any(), "only the segmented slice"
    present = set(np.unique(codes).tolist()) - {0}
    assert present == {1, 2, 3, 4, 5, 100, 201, 202, 203, 204, 205}
    assert (codes > 0).sum() == (volume[1] > 0).sum(), "every structure pixel keeps a code"
    assert spider_value_names(codes)["1"] == "L5" and spider_value_names(codes)["205"] == "L1-L2"


def test_the_sacrum_is_not_labelled_as_in_spider() -> None:
    phantom = spine_slice(bodies=5, lowest="sacrum")
    volume, grid = _volume(phantom.labels)
    codes = spider_label_map(volume, grid, [1])
    vertebra_pixels = (volume[1] == 2).sum()
    assert 0 < (np.isin(codes[1], range(1, 26)) | np.isin(codes[1], range(101, 126))).sum() < vertebra_pixels


def test_value_names_cover_unnamed_and_partial_levels() -> None:
    codes = np.array([0, 1, 106, 100, 201, UNNAMED_VERTEBRA, UNNAMED_DISC], dtype=np.uint16)
    assert spider_value_names(codes) == {"1": "L5", "100": "spinal canal", "106": "T12 (partly visible)",
                                         "201": "L5-S1", "99": "vertebra (level not named)",
                                         "299": "intervertebral disc (level not named)"}


@pytest.mark.parametrize("suffix", [".seg.nrrd", ".dcm"])
def test_formats_of_three_segments_refuse_spider_codes(suffix: str) -> None:
    with pytest.raises(SpineSegDiffError, match="--labels spider writes SPIDER's instance codes"):
        check_label_convention("spider", suffix)
    check_label_convention("spinesegdiff", suffix)
    with pytest.raises(SpineSegDiffError, match="--labels 'slicer': choose one of spinesegdiff, spider"):
        check_label_convention("slicer", ".mha")


def test_predict_writes_spider_codes_and_names_them(tmp_path: Path) -> None:
    from predict_helpers import predict
    from spinesegdiff.assets import sample_scan_path

    result = predict("-i", str(sample_scan_path()), "-o", str(tmp_path), "--labels", "spider", "--samples", "2",
                     "--device", "cpu", "--quiet")
    assert result.returncode == 0, result.stderr
    codes, _ = read_image(tmp_path / "spider_107_t2_SPACE_seg.mha")
    report = json.loads((tmp_path / "spider_107_t2_SPACE.json").read_text(encoding="utf-8"))
    assert report["label_convention"] == "spider"
    assert set(report["label_values"]) == {str(v) for v in np.unique(codes) if v}
    assert {"1", "100", "201"} <= set(report["label_values"]), "L5, the canal and L5-S1 on the sample scan"
    refused = predict("-i", str(sample_scan_path()), "-o", str(tmp_path / "no"), "--labels", "spider",
                      "--format", "seg.nrrd", "--device", "cpu")
    assert refused.returncode == 2 and not (tmp_path / "no").exists()
