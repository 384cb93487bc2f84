"""The ``<stem>_overlay.png`` of ``predict``: the segmented slice, coloured, beside its uncertainty heatmap.

Drawn with Pillow, without matplotlib (whose import and drawing were about 1.8 s of a one-scan call,
docs/PERFORMANCE.md). A 1000 x 620 RGB picture, white around:

- a title: ``<stem>: sagittal slice <index> (<how it was chosen>)`` (:func:`how_chosen`);
- left, "segmentation": the (central) segmented slice in grey, each structure blended over it at 45 % in the
  colour of the shipped label table (``assets/labels.json``: canal ``#f6c445``, vertebra ``#4fa3e0``, disc
  ``#e8575a``), a legend with the structures' names in its lower-left corner, the level names beside the spine
  and "level count doubtful" when the naming is (:func:`~spinesegdiff.anatomy.draw_level_names`);
- right, "uncertainty (normalised entropy)": the same slice with the heatmap blended over it at 75 % in
  cividis (:mod:`spinesegdiff.cividis`), and a colour bar from 0 (bottom) to 1 (top).

The slice keeps its proportions in millimetres (pixels need not be square). Grey levels run from 0 (black) to
the 99.5th percentile of the slice (white); the picture is scaled bilinearly, the label map by nearest
neighbour so the structures keep sharp edges and their exact colours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spinesegdiff.anatomy import draw_level_names
from spinesegdiff.cividis import cividis_lut
from spinesegdiff.data.label_table import label_table
from spinesegdiff.data.preprocess import native_slice
from spinesegdiff.drawing import Box, draw_text, font, hex_rgb

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

    from spinesegdiff.pipelines.predict import ScanSegmentation

CANVAS_SIZE = (1000, 620)
"""Width and height of the PNG in pixels (the former matplotlib figure: 10 x 6.2 inches at 100 dpi)."""
PANELS_TOP = 62
"""Where the panels' area starts, below the title and the panel titles."""
MARGIN = 10
GAP = 20
COLOUR_BAR_ZONE = 70
"""Width kept right of the uncertainty panel for the colour bar and its tick labels."""
COLOUR_BAR_WIDTH = 14
LABEL_ALPHA = 0.45
HEAT_ALPHA = 0.75
GREY_PERCENTILE = 99.5
WHITE = (255, 255, 255)
BLACK = (0, 0, 0, 255)
LEGEND_BOX = (255, 255, 255, 204)
"""The legend's background: white at 80 % opacity."""
TICKS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class OverlayLayout:
    """Where the two pictures of one slice go on the canvas.

    Attributes:
        segmentation: ``(left, top, right, bottom)`` of the segmentation picture, in canvas pixels.
        uncertainty: the same for the uncertainty picture (same size).
        slice_shape: ``(rows, cols)`` of the slice shown.
    """

    segmentation: tuple[int, int, int, int]
    uncertainty: tuple[int, int, int, int]
    slice_shape: tuple[int, int]

    @property
    def picture_size(self) -> tuple[int, int]:
        """``(width, height)`` of each picture in canvas pixels."""
        left, top, right, bottom = self.segmentation
        return right - left, bottom - top

    def to_canvas(self, row: float, col: float, *, panel: str = "segmentation") -> tuple[float, float]:
        """``(x, y)`` on the canvas of slice pixel ``(row, col)`` (pixel centres at whole numbers) in ``panel``
        (``"segmentation"`` or ``"uncertainty"``)."""
        left, top, _, _ = getattr(self, panel)
        width, height = self.picture_size
        return left + (col + 0.5) * width / self.slice_shape[1], top + (row + 0.5) * height / self.slice_shape[0]


def overlay_layout(slice_shape: tuple[int, int], row_mm: float, col_mm: float) -> OverlayLayout:
    """Fit a ``(rows, cols)`` slice of ``row_mm`` x ``col_mm`` pixels, in proportion, into each panel's area of
    :data:`CANVAS_SIZE`, centred."""
    area_width = (CANVAS_SIZE[0] - 2 * MARGIN - GAP - COLOUR_BAR_ZONE) // 2
    area_height = CANVAS_SIZE[1] - PANELS_TOP - MARGIN
    height_mm, width_mm = slice_shape[0] * row_mm, slice_shape[1] * col_mm
    scale = min(area_width / width_mm, area_height / height_mm)
    width = max(1, min(area_width, round(width_mm * scale)))
    height = max(1, min(area_height, round(height_mm * scale)))
    top = PANELS_TOP + (area_height - height) // 2
    boxes = []
    for area_left in (MARGIN, MARGIN + area_width + GAP):
        left = area_left + (area_width - width) // 2
        boxes.append((left, top, left + width, top + height))
    return OverlayLayout(segmentation=boxes[0], uncertainty=boxes[1], slice_shape=slice_shape)


def grey_levels(picture: np.ndarray) -> np.ndarray:
    """``(rows, cols)`` intensities -> uint8 grey: 0 and below black, the :data:`GREY_PERCENTILE` and above
    white (a slice whose percentile is 0 is scaled to 1)."""
    values = np.asarray(picture, dtype=np.float32)
    high = float(np.percentile(values, GREY_PERCENTILE)) or 1.0
    return np.round(np.clip(values / high, 0.0, 1.0) * 255).astype(np.uint8)


def structure_colours() -> np.ndarray:
    """``(4, 3)`` float32 sRGB in 0..255 per label value: background (unused) black, then SC, VB, IVD from the
    shipped label table."""
    colours = np.zeros((4, 3), dtype=np.float32)
    for structure in label_table().structures:
        colours[structure.value] = hex_rgb(structure.colour)
    return colours


def blend(grey: np.ndarray, colours: np.ndarray, alpha: float, where: np.ndarray | None = None) -> np.ndarray:
    """``(h, w)`` uint8 grey as RGB with ``(h, w, 3)`` ``colours`` (0..255) laid over it at opacity ``alpha``,
    where the ``(h, w)`` bool mask ``where`` is true (everywhere when ``None``): ``(h, w, 3)`` uint8."""
    rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=-1)
    inside = np.ones(grey.shape, dtype=bool) if where is None else where
    rgb[inside] = (1.0 - alpha) * rgb[inside] + alpha * colours[inside]
    return np.round(rgb).astype(np.uint8)


def _resized(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """A ``(rows, cols)`` uint8 (Pillow's mode ``L``) or float32 (mode ``F``) array scaled to ``size``."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(array)).resize(size, resample=resample))


def panel_pictures(picture: np.ndarray, labels: np.ndarray, heat: np.ndarray,
                   size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The two ``(height, width, 3)`` uint8 pictures of ``size = (width, height)``: the structures of
    ``labels`` (uint8 in 0..3) over the grey ``picture``, and the heatmap of ``heat`` (in [0, 1]) over it.
    All three inputs are ``(rows, cols)`` slices."""
    from PIL import Image

    grey = _resized(grey_levels(picture), size, Image.Resampling.BILINEAR)
    shown_labels = _resized(np.asarray(labels, dtype=np.uint8), size, Image.Resampling.NEAREST)
    shown_heat = _resized(np.asarray(heat, dtype=np.float32), size, Image.Resampling.BILINEAR)
    structures = blend(grey, structure_colours()[np.clip(shown_labels, 0, 3)], LABEL_ALPHA, shown_labels > 0)
    steps = np.round(np.clip(np.nan_to_num(shown_heat), 0.0, 1.0) * 255).astype(np.intp)
    uncertainty = blend(grey, cividis_lut()[steps].astype(np.float32), HEAT_ALPHA)
    return structures, uncertainty


def _draw_legend(draw: ImageDraw.ImageDraw, picture: tuple[int, int, int, int]) -> Box:
    """The structures' colours and names in the lower-left corner of the segmentation picture."""
    size, row_height, swatch, pad = 11, 15, 12, 5
    names = [(hex_rgb(s.colour), s.name) for s in label_table().structures]
    widths = [draw.textbbox((0, 0), name, font=font(size))[2] for _, name in names]
    width = pad + swatch + pad + max(widths) + pad
    height = pad + row_height * len(names) + pad
    left, bottom = picture[0] + 6, picture[3] - 6
    box = (left, bottom - height, left + width, bottom)
    draw.rectangle(box, fill=LEGEND_BOX, outline=(200, 200, 200, 255))
    for k, (colour, name) in enumerate(names):
        middle = box[1] + pad + row_height * k + row_height / 2
        draw.rectangle((left + pad, middle - swatch / 2 + 2, left + pad + swatch, middle + swatch / 2 - 2),
                       fill=(*colour, 255))
        draw_text(draw, (left + 2 * pad + swatch, middle), name, size=size, fill=BLACK, anchor="lm")
    return box


def _draw_colour_bar(canvas: Image.Image, draw: ImageDraw.ImageDraw, picture: tuple[int, int, int, int]) -> None:
    """cividis from 0 (bottom) to 1 (top) beside the uncertainty picture, with ticks every 0.2."""
    from PIL import Image

    left, top, bottom = picture[2] + 12, picture[1], picture[3]
    height = bottom - top
    steps = np.round(np.linspace(1.0, 0.0, height) * 255).astype(np.intp)
    bar = np.repeat(cividis_lut()[steps][:, None, :], COLOUR_BAR_WIDTH, axis=1)
    canvas.paste(Image.fromarray(np.ascontiguousarray(bar)), (left, top))
    draw.rectangle((left - 1, top - 1, left + COLOUR_BAR_WIDTH, bottom), outline=BLACK)
    for tick in TICKS:
        y = bottom - 1 - tick * (height - 1)
        draw.line((left + COLOUR_BAR_WIDTH, y, left + COLOUR_BAR_WIDTH + 3, y), fill=BLACK)
        draw_text(draw, (left + COLOUR_BAR_WIDTH + 6, y), f"{tick:.1f}", size=11, fill=BLACK, anchor="lm")


def overlay_image(result: ScanSegmentation) -> Image.Image:
    """The overlay of ``result`` as a :data:`CANVAS_SIZE` RGB Pillow image (see the module docstring)."""
    from PIL import Image, ImageDraw

    grid = result.prepared.grid
    index = result.prepared.indices[len(result.prepared.indices) // 2]
    picture = native_slice(result.image, grid, index)
    layout = overlay_layout(picture.shape, grid.rows.native_spacing, grid.cols.native_spacing)
    structures, uncertainty = panel_pictures(picture, native_slice(result.labels, grid, index),
                                             native_slice(result.uncertainty, grid, index), layout.picture_size)
    canvas = Image.new("RGB", CANVAS_SIZE, WHITE)
    canvas.paste(Image.fromarray(structures), layout.segmentation[:2])
    canvas.paste(Image.fromarray(uncertainty), layout.uncertainty[:2])
    draw = ImageDraw.Draw(canvas, "RGBA")
    draw_text(draw, (CANVAS_SIZE[0] / 2, 8), f"{result.stem}: sagittal slice {index} ({how_chosen(result.settings)})",
              size=15, fill=BLACK, anchor="mt")
    for name, title in (("segmentation", "segmentation"), ("uncertainty", "uncertainty (normalised entropy)")):
        box = getattr(layout, name)
        draw_text(draw, ((box[0] + box[2]) / 2, box[1] - 6), title, size=13, fill=BLACK, anchor="mb")
    _draw_legend(draw, layout.segmentation)
    _draw_colour_bar(canvas, draw, layout.uncertainty)
    if result.levels is not None and result.levels.note["slice"] == index:
        left, top, right, bottom = layout.segmentation
        draw_level_names(draw, result.levels, grid.rows.native_spacing, grid.cols.native_spacing,
                         to_canvas=layout.to_canvas,
                         corner=(left + 0.02 * (right - left), top + 0.02 * (bottom - top)))
    return canvas


CHOSEN_BY = {"anatomy": "mid-sagittal, chosen by anatomy", "user": "chosen with --slice",
             "centre": "the central slice", "only": "the scan's only sagittal slice"}
"""The title's words for the report's ``slice.chosen_by``."""


def how_chosen(settings: dict) -> str:
    """The title's note on the slice shown: how a single slice was chosen, or that the whole volume was
    segmented (then the middle segmented slice is shown)."""
    if settings.get("mode") == "volume":
        return "volume, middle slice shown"
    chosen_by = (settings.get("slice") or {}).get("chosen_by")
    return CHOSEN_BY.get(chosen_by, str(settings.get("mode", "one slice")))


PNG_COMPRESS_LEVEL = 3
"""zlib effort of the overlay PNG (:func:`render_overlay`)."""


def render_overlay(result: ScanSegmentation, path: Path) -> None:
    """Write the overlay of ``result`` (:func:`overlay_image`) to ``path`` as a PNG.

    ``path`` is the staged file of :func:`~spinesegdiff.pipelines.publish.staged_outputs` in ``predict``, so the
    PNG appears with the scan's other outputs or not at all; Pillow's ``OSError`` (a full disk) is reported
    there as a one-line error naming the file. zlib level 3: 0.05 s and 585 kB for the shipped scan's overlay,
    against 0.14 s and 576 kB at Pillow's default 6 (measured on the project's 2-core CPU).
    """
    overlay_image(result).save(Path(path), format="PNG", compress_level=PNG_COMPRESS_LEVEL)
