"""The overlay PNG drawn with Pillow (issue 17): its size, the label colours where the labels are, the cividis
heatmap, the level names, the fonts, and no matplotlib anywhere on the predict path."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from predict_helpers import write_scan
from spinesegdiff.anatomy import scan_levels
from spinesegdiff.cividis import cividis_lut
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.data.preprocess import native_slice, plan_grid, prepare_scan
from spinesegdiff.drawing import draw_text, font
from spinesegdiff.pipelines.overlay import CANVAS_SIZE, overlay_image, overlay_layout, render_overlay
from spinesegdiff.pipelines.predict import ScanSegmentation

STRUCTURE_RGB = {1: (0xF6, 0xC4, 0x45), 2: (0x4F, 0xA3, 0xE0), 3: (0xE8, 0x57, 0x5A)}
"""The label colours of the overlay before Pillow (matplotlib's ListedColormap), spinal canal, vertebra, disc."""


def _phantom_result(*, uncertainty_on: int | None = None, levels: bool = False) -> ScanSegmentation:
    """A phantom scan as if segmented perfectly; the uncertainty is 1 on label ``uncertainty_on``, else 0."""
    phantom = make_phantom(shape=(3, 240, 200), spacing=(1.0, 1.2, 3.0), num_vertebrae=6, seed=1)
    image, labels = phantom.image * 800, phantom.labels.astype(np.uint8)
    grid = plan_grid(image.shape, phantom.geometry)
    prepared = prepare_scan(image, phantom.geometry, slices=[grid.central_index])
    uncertainty = (labels == uncertainty_on).astype(np.float32)
    result = ScanSegmentation(source=None, stem="phantom", image=image, labels=labels, uncertainty=uncertainty,
                              geometry=phantom.geometry, prepared=prepared, model_grid=None,
                              settings={"mode": "central slice"})
    if levels:
        result.levels = scan_levels(labels, grid, prepared.indices, image_zyx=image)
    return result


def _slice_and_layout(result: ScanSegmentation):
    grid = result.prepared.grid
    index = result.prepared.indices[0]
    labels = native_slice(result.labels, grid, index)
    return labels, overlay_layout(labels.shape, grid.rows.native_spacing, grid.cols.native_spacing)


def _inner(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """``(k, 2)`` (row, col) of the pixels ``margin`` pixels inside ``mask`` (resampling cannot reach them)."""
    return np.argwhere(ndimage.binary_erosion(mask, iterations=margin))


def _canvas_pixels(canvas: np.ndarray, layout, points: np.ndarray, panel: str) -> np.ndarray:
    xy = np.array([layout.to_canvas(r, c, panel=panel) for r, c in points])
    return canvas[xy[:, 1].astype(int), xy[:, 0].astype(int)].astype(np.float64)


def test_cividis_table_is_matplotlibs() -> None:
    colormaps = pytest.importorskip("matplotlib").colormaps
    expected = np.round(colormaps["cividis"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(cividis_lut(), expected)


def test_overlay_png_is_the_canvas_size(tmp_path: Path) -> None:
    render_overlay(_phantom_result(levels=True), tmp_path / "x_overlay.png")
    with Image.open(tmp_path / "x_overlay.png") as picture:
        assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == CANVAS_SIZE == (1000, 620)


def test_the_slice_keeps_its_proportions_in_millimetres() -> None:
    square = overlay_layout((240, 200), 1.0, 1.2)  # 240 mm high, 240 mm wide
    width, height = square.picture_size
    assert abs(width - height) <= 1 and height > 400
    seg, unc = square.segmentation, square.uncertainty
    assert (unc[1], unc[3], unc[2] - unc[0]) == (seg[1], seg[3], seg[2] - seg[0])  # side by side, same size
    assert seg[2] < unc[0] and unc[2] < CANVAS_SIZE[0] - 40  # room for the colour bar
    tall = overlay_layout((400, 100), 1.0, 1.0)
    assert tall.picture_size[1] / tall.picture_size[0] == pytest.approx(4.0, rel=0.02)
    assert tall.to_canvas(399.5, 99.5) == pytest.approx((tall.segmentation[2], tall.segmentation[3]))


def test_label_colours_show_where_the_labels_are() -> None:
    result = _phantom_result()
    unlabelled = dataclasses.replace(result, labels=np.zeros_like(result.labels))
    coloured, grey = np.asarray(overlay_image(result)), np.asarray(overlay_image(unlabelled))
    labels, layout = _slice_and_layout(result)
    upper = np.zeros_like(labels, dtype=bool)
    upper[: labels.shape[0] * 2 // 3] = True  # the legend sits in the lower-left corner
    for value, rgb in STRUCTURE_RGB.items():
        points = _inner((labels == value) & upper)
        assert len(points) > 20, value
        shown = _canvas_pixels(coloured, layout, points, "segmentation")
        under = _canvas_pixels(grey, layout, points, "segmentation")
        assert (under[:, 0] == under[:, 1]).all() and (under[:, 1] == under[:, 2]).all()  # grey without labels
        np.testing.assert_allclose(shown, 0.55 * under + 0.45 * np.array(rgb), atol=1.0, err_msg=str(value))
        # the uncertainty picture does not show the labels
        np.testing.assert_array_equal(_canvas_pixels(coloured, layout, points, "uncertainty"),
                                      _canvas_pixels(grey, layout, points, "uncertainty"))
    background = _inner((labels == 0) & upper)
    np.testing.assert_array_equal(_canvas_pixels(coloured, layout, background, "segmentation"),
                                  _canvas_pixels(grey, layout, background, "segmentation"))


def test_uncertainty_is_cividis_over_the_slice() -> None:
    result = _phantom_result(uncertainty_on=3)
    canvas = np.asarray(overlay_image(result))
    unlabelled = np.asarray(overlay_image(dataclasses.replace(result, labels=np.zeros_like(result.labels))))
    labels, layout = _slice_and_layout(result)
    upper = np.zeros_like(labels, dtype=bool)
    upper[: labels.shape[0] * 2 // 3] = True  # the legend covers the lower-left corner of the grey reference
    for mask, value in (((labels == 3), 255), ((labels == 0), 0)):
        points = _inner(mask & upper)
        assert len(points) > 20, value
        heat = _canvas_pixels(canvas, layout, points, "uncertainty")
        grey = _canvas_pixels(unlabelled, layout, points, "segmentation")  # the same slice, the same size
        np.testing.assert_allclose(heat, 0.25 * grey + 0.75 * cividis_lut()[value], atol=1.0, err_msg=str(value))
    # the colour bar: yellow at its top, dark blue at its bottom
    _, top, right, bottom = layout.uncertainty
    column = canvas[top:bottom, right + 12 + 7]
    assert tuple(column[0]) == tuple(cividis_lut()[255]) and tuple(column[-1]) == tuple(cividis_lut()[0])


def test_level_names_and_a_doubtful_count_are_drawn() -> None:
    result = _phantom_result(levels=True)
    _, layout = _slice_and_layout(result)
    plain = np.asarray(overlay_image(dataclasses.replace(result, levels=None)))
    report = result.levels
    sure = np.asarray(overlay_image(dataclasses.replace(
        result, levels=dataclasses.replace(report, note={**report.note, "doubtful": False}))))
    doubtful = np.asarray(overlay_image(dataclasses.replace(
        result, levels=dataclasses.replace(report, note={**report.note, "doubtful": True}))))
    named = [level for level in report.levels.levels if level.name is not None]
    assert len(named) >= 5
    for level in named:
        mask = report.levels.body(level) if level.kind == "vertebra" else report.levels.mask(level)
        rows, cols = np.nonzero(mask)
        x_front, y = layout.to_canvas(rows.mean(), cols.min())
        ahead = sure[int(y) - 2:int(y) + 3, int(x_front) - 60:int(x_front)]
        assert (ahead != plain[int(y) - 2:int(y) + 3, int(x_front) - 60:int(x_front)]).any(), level.name
    left, top = layout.segmentation[:2]
    corner = (slice(top, top + 30), slice(left, left + 200))
    orange = (doubtful[corner][..., 0] > 200) & (doubtful[corner][..., 1] > 120) & (doubtful[corner][..., 2] < 90)
    assert orange.sum() > 20, "no orange note for a doubtful count"
    assert (sure[corner] == plain[corner]).all(), "a sure count is noted"


def test_an_old_pillow_falls_back_to_the_bitmap_font(monkeypatch) -> None:
    from PIL import ImageDraw, ImageFont

    bitmap = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)  # Pillow >= 10.1 / older

    def without_size(size=None):  # Pillow < 10.1: no size, a bitmap font
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return bitmap()

    monkeypatch.setattr(ImageFont, "load_default", without_size)
    font.cache_clear()
    try:
        chosen = font(30)
        picture = Image.new("RGB", (200, 40), (0, 0, 0))
        box = draw_text(ImageDraw.Draw(picture, "RGBA"), (190, 20), "L5-S1 é ü ✓", size=30,
                        fill=(255, 255, 255, 255), anchor="rm")
    finally:
        font.cache_clear()
    assert chosen is not None and not isinstance(chosen, ImageFont.FreeTypeFont)
    assert box[2] == pytest.approx(192) and np.asarray(picture).max() > 0


def test_text_anchors() -> None:
    from PIL import ImageDraw

    picture = Image.new("RGB", (300, 100), (0, 0, 0))
    draw = ImageDraw.Draw(picture, "RGBA")
    left, top, right, bottom = draw_text(draw, (150, 50), "L4-L5", size=20, fill=(255, 255, 255, 255),
                                         anchor="rm", pad=2)
    assert right == pytest.approx(152) and (top + bottom) / 2 == pytest.approx(50, abs=0.01)
    left, top, _, _ = draw_text(draw, (10, 5), "L4", size=20, fill=(255, 255, 255, 255), anchor="lt", pad=0)
    assert (left, top) == pytest.approx((10, 5))
    with pytest.raises(ValueError, match="anchor must be one of"):
        draw_text(draw, (0, 0), "x", size=10, fill=(0, 0, 0, 255), anchor="center")


PREDICT_WITHOUT_MATPLOTLIB = """
import sys
from spinesegdiff.cli import main
code = main(sys.argv[1:])
print(code, sorted(name for name in sys.modules if name.split(".")[0] == "matplotlib"))
"""


def test_a_predict_run_imports_no_matplotlib(tiny_model: Path, tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "scan.mha")
    done = subprocess.run(
        [sys.executable, "-c", PREDICT_WITHOUT_MATPLOTLIB, "predict", "-i", str(scan), "-o", str(tmp_path / "out"),
         "--model", str(tiny_model), "--samples", "1", "--steps", "1", "--fuse-steps", "1", "--backend", "torch",
         "--device", "cpu", "--keep-all-parts", "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 []", done.stdout
    with Image.open(tmp_path / "out" / "scan_overlay.png") as picture:
        assert picture.size == CANVAS_SIZE


def test_the_title_says_how_the_slice_shown_was_chosen() -> None:
    from spinesegdiff.pipelines.overlay import how_chosen

    assert how_chosen({"mode": "central slice", "slice": {"chosen_by": "anatomy"}}) == \
        "mid-sagittal, chosen by anatomy"
    assert how_chosen({"mode": "central slice", "slice": {"chosen_by": "user"}}) == "chosen with --slice"
    assert how_chosen({"mode": "central slice", "slice": {"chosen_by": "centre"}}) == "the central slice"
    assert how_chosen({"mode": "volume", "slice": None}) == "volume, middle slice shown"
    assert how_chosen({"mode": "central slice"}) == "central slice"  # a result made before the choice existed
