"""A field of view larger than 320 mm is segmented whole: the canvas grows (data/preprocess.plan_grid) and is
segmented in overlapping 320 x 320 windows (pipelines/tiling.py)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
from spinesegdiff.data.io import write_image
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.data.preprocess import (
    MAX_CANVAS,
    MODEL_SIZE,
    canvas_size,
    labels_to_model,
    native_slice,
    plan_grid,
    prepare_scan,
    restore_labels,
)
from spinesegdiff.pipelines.results import SliceSegmentation
from spinesegdiff.pipelines.tiling import (
    MIN_OVERLAP,
    Tiling,
    presegment_canvas,
    segment_canvas,
    spine_region,
    spine_region_of_labels,
    starts_over,
    window_starts,
)


@pytest.mark.parametrize("size", [320, 321, 384, 500, 640, 641, 1024])
def test_windows_cover_the_axis_with_the_least_overlap(size: int) -> None:
    starts = window_starts(size)
    assert starts[0] == 0 and starts[-1] + MODEL_SIZE == size
    assert all(b > a for a, b in itertools.pairwise(starts))
    assert all(a + MODEL_SIZE - b >= MIN_OVERLAP for a, b in itertools.pairwise(starts))
    fewer = int(np.ceil((size - MODEL_SIZE) / (MODEL_SIZE - MIN_OVERLAP))) + 1
    assert len(starts) == fewer


def test_window_starts_refuse_a_canvas_smaller_than_the_window() -> None:
    with pytest.raises(ValueError, match="smaller than the 320-pixel window"):
        window_starts(300)
    with pytest.raises(ValueError, match="min_overlap"):
        window_starts(400, min_overlap=320)


def test_split_then_join_gives_back_any_per_pixel_map() -> None:
    canvas = np.random.default_rng(0).random((2, 3, 390, 350)).astype(np.float32)
    tiling = Tiling.of(np.empty((390, 350)))
    assert len(tiling.windows) == 4
    tiles = np.stack([np.stack([channel[r:r + 320, c:c + 320] for channel in image])
                      for image in canvas for r, c in tiling.windows])
    np.testing.assert_allclose(tiling.join(tiles), canvas, rtol=1e-6)
    np.testing.assert_array_equal(tiling.split(canvas[:, 0]), tiles[:, 0])


def test_join_blends_towards_the_window_that_saw_more_context() -> None:
    tiling = Tiling.of(np.empty((400, 320)))  # two windows: rows 0-319 and 80-399
    tiles = np.stack([np.zeros((320, 320)), np.ones((320, 320))])
    joined = tiling.join(tiles)[0]
    assert joined[0, 0] == 0.0 and joined[-1, 0] == 1.0  # covered by one window only
    middle = joined[80:320, 0]
    assert np.all(np.diff(middle) >= 0) and middle[0] < 0.05 and middle[-1] > 0.95  # a ramp, not a seam
    with pytest.raises(ValueError, match="do not split into slices of 2 windows"):
        tiling.join(tiles[:1])


def _fake_result(images: np.ndarray) -> SliceSegmentation:
    """A per-pixel 'segmenter': class 1 where the image is bright, 2 where mid-grey (a pure function of each
    pixel, so windowing must reproduce the canvas result exactly)."""
    x = np.asarray(images, dtype=np.float32) / 255.0
    bright, mid = (x > 0.66).astype(np.float32), ((x > 0.33) & (x <= 0.66)).astype(np.float32)
    classes = np.stack([1 - bright - mid, bright, mid, np.zeros_like(x)], axis=1)
    return SliceSegmentation(probabilities=classes[:, 1:], class_probabilities=classes,
                             labels=classes.argmax(axis=1).astype(np.uint8), uncertainty=x,
                             structure_uncertainty=classes[:, 1:] * 0.5, variance=classes[:, 1:] * 0.1,
                             network_calls=len(x))


def test_segment_canvas_equals_the_segmenter_on_the_whole_canvas() -> None:
    images = np.random.default_rng(1).integers(0, 256, (2, 400, 360), dtype=np.uint8)
    seen: list[tuple[int, ...]] = []
    finished: list[int] = []

    def segment(batch: np.ndarray, progress=None) -> SliceSegmentation:
        seen.append(batch.shape)
        if progress is not None:
            for _ in batch:
                progress(1)
        return _fake_result(batch)

    result = segment_canvas(segment, images, progress=finished.append)
    expected = _fake_result(images)
    assert seen == [(8, 320, 320)]  # 2 slices x 4 windows, at the network's size
    assert sum(finished) == 2  # progress counts slices, not windows
    for name in ("probabilities", "class_probabilities", "uncertainty", "structure_uncertainty", "variance"):
        np.testing.assert_allclose(getattr(result, name), getattr(expected, name), atol=1e-6)
    np.testing.assert_array_equal(result.labels, expected.labels)
    assert result.network_calls == 8


def test_windows_around_a_region_cover_it_and_leave_the_rest_background() -> None:
    canvas = np.empty((400, 700))
    tiling = Tiling.around(canvas, (10, 390, 400, 560))  # 380 rows x 160 columns
    assert tiling.row_starts == (10, 70) and tiling.col_starts == (320,)  # one column of windows, about the region
    assert starts_over(0, 50, 700) == [0] and starts_over(650, 700, 700) == [380]  # kept inside the axis
    tiles = np.full((2, 4, 320, 320), 0.25, dtype=np.float32)
    joined = tiling.join(tiles, background_channel=0)
    assert joined.shape == (1, 4, 400, 700)
    np.testing.assert_allclose(joined[0, :, 10:390, 320:640], 0.25)
    np.testing.assert_array_equal(joined[0, 1:, :10], 0.0)
    np.testing.assert_array_equal(joined[0, 0, :, :320], 1.0)
    np.testing.assert_array_equal(joined[0, 1:, :, 640:], 0.0)


def test_spine_region_is_the_structures_box_with_its_margin() -> None:
    labels = np.zeros((2, 400, 500), dtype=np.uint8)
    labels[0, 100:200, 300:350] = 2
    labels[1, 150:390, 320:330] = 1
    assert spine_region_of_labels(labels, margin=32) == (68, 400, 268, 382)
    probabilities = np.zeros((1, 4, 400, 500), dtype=np.float32)
    probabilities[0, 0] = 1.0
    assert spine_region(probabilities) is None
    probabilities[0, 3, 5, 7] = 2.0
    assert spine_region(probabilities, margin=0) == (5, 6, 7, 8)


def test_segment_canvas_with_a_presegmenter_samples_only_around_its_spine() -> None:
    images = np.zeros((1, 400, 700), dtype=np.uint8)
    images[0, 20:380, 450:520] = 255  # a bright column: class 1 for the fake segmenter
    seen: list[tuple[int, ...]] = []

    def segment(batch: np.ndarray) -> SliceSegmentation:
        seen.append(batch.shape)
        return _fake_result(batch)

    result = segment_canvas(segment, images, presegmenter=lambda batch: _fake_result(batch).class_probabilities)
    assert seen == [(2, 320, 320)]  # 2 of the 6 windows of the canvas
    expected = _fake_result(images)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_allclose(result.class_probabilities, expected.class_probabilities, atol=1e-6)


def test_a_320_canvas_passes_straight_through() -> None:
    images = np.zeros((1, 320, 320), dtype=np.uint8)
    sentinel = _fake_result(images)
    assert segment_canvas(lambda batch: sentinel, images) is sentinel
    probabilities = presegment_canvas(lambda batch: _fake_result(batch).class_probabilities, images)
    assert probabilities.shape == (1, 4, 320, 320)


def test_presegment_canvas_equals_the_presegmenter_on_the_whole_canvas() -> None:
    images = np.random.default_rng(2).integers(0, 256, (3, 330, 700), dtype=np.uint8)

    def presegmenter(batch: np.ndarray) -> np.ndarray:
        assert batch.shape[1:] == (320, 320)
        return _fake_result(batch).class_probabilities

    np.testing.assert_allclose(presegment_canvas(presegmenter, images), _fake_result(images).class_probabilities,
                               atol=1e-6)


def test_canvas_grows_to_the_field_of_view_and_no_further_than_its_cap() -> None:
    assert canvas_size(300, 1.0) == MODEL_SIZE
    assert canvas_size(381, 1.0) == 381
    assert canvas_size(512, 0.75) == 384
    assert canvas_size(4000, 1.0) == MAX_CANVAS


def _tall_phantom():
    """A phantom sagittal series 470 mm tall and 330 mm deep (a large 2D TSE field of view)."""
    return make_phantom(shape=(5, 1000, 700), spacing=(0.47, 0.47, 3.0), seed=7)


def test_a_covering_grid_keeps_the_whole_slice_where_the_fixed_grid_crops_it() -> None:
    phantom = _tall_phantom()
    fixed = plan_grid(phantom.image.shape, phantom.geometry)
    grown = plan_grid(phantom.image.shape, phantom.geometry, cover_field_of_view=True)
    assert (fixed.rows.model_size, fixed.cols.model_size) == (320, 320)
    assert (grown.rows.model_size, grown.cols.model_size) == (470, 329)
    truth = native_slice(phantom.labels, grown, grown.central_index)
    assert (truth > 0)[-120:].any()  # spine in the bottom 56 mm, outside the central 320 mm
    bottom = truth[-120:] > 0
    kept = {}
    for name, grid in (("fixed", fixed), ("grown", grown)):
        back = restore_labels(labels_to_model(truth, grid), grid)[-120:]
        kept[name] = float(np.mean(back[bottom] == truth[-120:][bottom]))
    assert kept["fixed"] == 0.0 and kept["grown"] > 0.9, kept
    prepared = prepare_scan(phantom.image, phantom.geometry, cover_field_of_view=True)
    assert prepared.images.shape == (1, 470, 329)
    assert prepare_scan(phantom.image, phantom.geometry).images.shape == (1, 320, 320)


def test_predict_segments_the_whole_field_of_view(tiny_model: Path, tmp_path: Path, spine_judgement_off) -> None:
    from predict_helpers import FAST, predict

    phantom = _tall_phantom()
    scan = write_image(tmp_path / "tall.mha", (phantom.image * 800).astype(np.int16), phantom.geometry)
    done = predict("-i", str(scan), "-o", str(tmp_path / "out"), "--model", str(tiny_model), *FAST)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "tall.json").read_text(encoding="utf-8"))
    assert report["model_grid"] == {"rows": 470, "cols": 329, "spacing_mm": 1.0, "cropped": False}


def test_shipped_pipeline_segments_the_vertebra_beyond_the_central_320_mm() -> None:
    """Real: vb2-12 (external-t2-2d, 381 mm field) has its T11 body in the top 30 mm; the whole-field canvas
    segments it (on the central 320 mm alone the body recall was 0.786)."""
    folder = SHARED_DATA / "external-t2-2d" / "vb"
    if not (folder / "images" / "vb2-12.mha").exists():
        pytest.skip(f"real data not found at {folder} (set SPINESEGDIFF_SHARED_DATA to the shared/data folder)")
    from spinesegdiff.data.io import read_image
    from spinesegdiff.evaluation.partial_labels import body_scores
    from spinesegdiff.pipelines.predict import segment

    reference, _ = read_image(folder / "masks" / "vb2-12.mha")
    result = segment(folder / "images" / "vb2-12.mha", device="cpu", quiet=True)
    grid = result.prepared.grid
    index = result.prepared.indices[0]
    scores = body_scores(native_slice(result.labels, grid, index), native_slice(reference, grid, index),
                         (grid.rows.native_spacing, grid.cols.native_spacing))
    assert scores["body_recall"] > 0.85, scores
    assert scores["body_dice"] > 0.9, scores


def test_the_report_says_when_even_a_grown_grid_crops_the_field() -> None:
    from spinesegdiff.pipelines.tiling import model_grid_summary

    tall = make_phantom(shape=(3, 1200, 300), spacing=(1.0, 1.0, 3.0), seed=1)  # 1200 mm superior-inferior
    grid = plan_grid(tall.image.shape, tall.geometry, cover_field_of_view=True)
    assert model_grid_summary(grid) == {"rows": MAX_CANVAS, "cols": 320, "spacing_mm": 1.0, "cropped": True}
    small = make_phantom(shape=(3, 200, 150), spacing=(1.2, 1.2, 3.0), seed=1)
    small_grid = plan_grid(small.image.shape, small.geometry, cover_field_of_view=True)
    assert model_grid_summary(small_grid)["cropped"] is False
    assert model_grid_summary(plan_grid(tall.image.shape, tall.geometry))["cropped"] is True  # the fixed grid


def test_predict_warns_when_the_field_is_cropped(tiny_model: Path, tmp_path: Path, spine_judgement_off) -> None:
    from predict_helpers import FAST, predict

    tall = make_phantom(shape=(3, 1100, 200), spacing=(1.0, 1.0, 3.0), seed=2)  # 1100 mm superior-inferior
    scan = write_image(tmp_path / "whole.mha", (tall.image * 800).astype(np.int16), tall.geometry)
    done = predict("-i", str(scan), "-o", str(tmp_path / "out"), "--model", str(tiny_model), *FAST)
    assert done.returncode == 0, done.stderr
    assert (f"spinesegdiff: warning: {scan}: the field of view is larger than the model grid can hold: only the "
            "central 1024 mm of its 1100 mm superior-inferior were segmented") in done.stderr
    report = json.loads((tmp_path / "out" / "whole.json").read_text(encoding="utf-8"))
    assert report["model_grid"]["cropped"] is True
