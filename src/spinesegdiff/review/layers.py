"""The picture layers of one case: PNG files per segmented sagittal slice, a thumbnail, and a probe per slice.

For each slice ``k`` of a case (the slices its report lists as segmented), in the case's layer folder::

    image-k.png        the scan's slice, grey, windowed to its 0.5-99.5th intensity percentiles (no file when the
                       scan was not found: the viewer shows the other layers on black)
    labels-k.png       RGBA: each structure in its palette colour, background transparent
    uncertainty-k.png  RGBA: the heatmap in the palette's map, opacity rising with uncertainty
    probe-k.js         the structure and uncertainty of every pixel, for the cursor read-out
    thumbnail.png      image and labels of the first slice shown, 96 pixels high, for the table

Slices are native-resolution sagittal views (rows superior to inferior, columns anterior to posterior, as
:func:`~spinesegdiff.data.preprocess.native_slice` draws them); pixels need not be square, so the page stretches
the layers to the slice's physical size (:class:`CaseLayers`).

A probe holds one byte per pixel, ``label << 6 | round(uncertainty * 63)``, zlib-compressed and base64-encoded
inside a call ``spinesegdiffProbe(case, slice, rows, cols, data)``; a script, because a page opened from disk
(``file://``) may load scripts beside it but may not read a picture's pixels.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinesegdiff.data.preprocess import SagittalGrid, native_slice, plan_grid
from spinesegdiff.files import atomic_write, atomic_write_text
from spinesegdiff.review.cases import CaseRecord
from spinesegdiff.review.palette import UNCERTAINTY_OPAQUE_AT, label_lut, uncertainty_lut
from spinesegdiff.review.volumes import CaseVolumes

THUMBNAIL_HEIGHT = 96
WINDOW_PERCENTILES = (0.5, 99.5)
WINDOW_SAMPLE = 1 << 18
"""At most this many voxels are looked at to window the scan."""
PROBE_LEVELS = 63
"""The probe's uncertainty steps (6 bits): a pixel's uncertainty is read back to within 1/126."""
PNG_COMPRESSION = 3
PROBE_COMPRESSION = 3
"""zlib levels of the PNGs and probes: on a 640 x 512 SPIDER slice, level 3 writes the layers in about half the
time of the default 6, for image and heatmap files 10-15 % larger (the small label layer about twice as large)."""


@dataclass(frozen=True)
class CaseLayers:
    """Where a case's layers are and how to show them.

    Attributes:
        folder: the case's layer folder.
        slices: the sagittal slices drawn (indices along the scan's left-right axis), ascending.
        initial: the slice shown first (the one nearest the scan's centre).
        rows, cols: pixels of a slice (superior-inferior, anterior-posterior).
        height_mm, width_mm: its physical size.
        image: whether ``image-k.png`` layers exist.
        thumbnail: ``(width, height)`` of ``thumbnail.png`` in pixels.
    """

    folder: Path
    slices: tuple[int, ...]
    initial: int
    rows: int
    cols: int
    height_mm: float
    width_mm: float
    image: bool
    thumbnail: tuple[int, int]


def layer_name(kind: str, index: int) -> str:
    """The file of one layer: ``kind`` is ``image``, ``labels``, ``uncertainty`` (PNG) or ``probe`` (script)."""
    return f"{kind}-{index}.{'js' if kind == 'probe' else 'png'}"


def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """The grey window of a scan: its 0.5th and 99.5th intensity percentiles (a voxel sample), ``low < high``."""
    values = np.asarray(image).ravel()
    values = values[:: max(1, values.size // WINDOW_SAMPLE)].astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
    return (low, high) if high > low else (low, low + 1.0)


def grey(view: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """``(rows, cols)`` intensities -> uint8 grey, ``window`` mapped to 0..255 (non-finite values black)."""
    low, high = window
    scaled = (np.nan_to_num(np.asarray(view, dtype=np.float64), nan=low) - low) / (high - low)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def clean_labels(view: np.ndarray) -> np.ndarray:
    """Classes as ``uint8`` 0-3; any other value (a foreign label, a fraction) is background."""
    view = np.asarray(view)
    return np.where((view >= 0) & (view <= 3) & (view == np.round(view)), view, 0).astype(np.uint8)


def clean_uncertainty(view: np.ndarray) -> np.ndarray:
    """Uncertainty as ``float32`` in [0, 1]; non-finite values are 0."""
    values = np.asarray(view, dtype=np.float32)
    return np.clip(np.where(np.isfinite(values), values, 0.0), 0.0, 1.0)


def label_rgba(view: np.ndarray) -> np.ndarray:
    """``(rows, cols)`` classes 0-3 -> ``(rows, cols, 4)`` uint8 RGBA in the structure palette."""
    return label_lut()[clean_labels(view)]


def uncertainty_rgba(view: np.ndarray) -> np.ndarray:
    """``(rows, cols)`` uncertainty in [0, 1] -> ``(rows, cols, 4)`` uint8 RGBA: the heatmap colour, and opacity
    rising linearly from 0 to 255 at :data:`~spinesegdiff.review.palette.UNCERTAINTY_OPAQUE_AT`."""
    values = clean_uncertainty(view)
    rgba = np.empty((*values.shape, 4), dtype=np.uint8)
    rgba[..., :3] = uncertainty_lut()[np.round(values * 255).astype(np.intp)]
    rgba[..., 3] = np.round(np.clip(values / UNCERTAINTY_OPAQUE_AT, 0.0, 1.0) * 255).astype(np.uint8)
    return rgba


def probe_bytes(labels: np.ndarray, uncertainty: np.ndarray) -> bytes:
    """One byte per pixel, row by row: ``label << 6 | round(uncertainty * 63)`` (labels 0-3, uncertainty [0, 1])."""
    levels = np.round(clean_uncertainty(uncertainty) * PROBE_LEVELS).astype(np.uint8)
    return (clean_labels(labels) << 6 | levels).tobytes()


def probe_script(case: str, index: int, labels: np.ndarray, uncertainty: np.ndarray) -> str:
    """The probe of one slice as a script for the page (see the module's description)."""
    payload = base64.b64encode(zlib.compress(probe_bytes(labels, uncertainty), PROBE_COMPRESSION)).decode("ascii")
    rows, cols = labels.shape
    return f"spinesegdiffProbe({json.dumps(case)}, {index}, {rows}, {cols}, \"{payload}\");\n"


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    atomic_write(path, lambda temporary: Image.fromarray(np.ascontiguousarray(pixels)).save(
        temporary, format="PNG", compress_level=PNG_COMPRESSION))


def _thumbnail(image: np.ndarray | None, labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(h, w, 3)`` uint8: the grey slice (black without one) with the labels blended in at half opacity."""
    from PIL import Image

    base = np.zeros(labels.shape, dtype=np.uint8) if image is None else image
    colours = label_rgba(labels).astype(np.float32)
    alpha = colours[..., 3:] / 255.0 * 0.5
    blended = base[..., None].astype(np.float32) * (1 - alpha) + colours[..., :3] * alpha
    picture = Image.fromarray(np.round(blended).astype(np.uint8))
    return np.asarray(picture.resize(size, Image.Resampling.BOX))


def _slices(case: CaseRecord, grid: SagittalGrid) -> tuple[int, ...]:
    inside = sorted({k for k in case.slices if 0 <= k < grid.num_sagittal})
    return tuple(inside) if inside else (grid.central_index,)


def write_case_layers(case: CaseRecord, volumes: CaseVolumes, folder: Path) -> CaseLayers:
    """Write the layers of ``case`` into ``folder`` (created) and say how to show them."""
    folder.mkdir(parents=True, exist_ok=True)
    grid = plan_grid(volumes.labels.shape, volumes.geometry)
    slices = _slices(case, grid)
    initial = min(slices, key=lambda k: (abs(k - grid.central_index), k))
    window = intensity_window(volumes.image) if volumes.image is not None else None
    thumbnail_source: tuple[np.ndarray | None, np.ndarray] | None = None
    for index in slices:
        labels = native_slice(volumes.labels, grid, index)
        uncertainty = native_slice(volumes.uncertainty, grid, index)
        picture = grey(native_slice(volumes.image, grid, index), window) if window is not None else None
        if picture is not None:
            _write_png(folder / layer_name("image", index), picture)
        _write_png(folder / layer_name("labels", index), label_rgba(labels))
        _write_png(folder / layer_name("uncertainty", index), uncertainty_rgba(uncertainty))
        atomic_write_text(folder / layer_name("probe", index), probe_script(case.case, index, labels, uncertainty))
        if index == initial:
            thumbnail_source = (picture, labels)
    rows, cols = grid.rows.native_size, grid.cols.native_size
    height_mm, width_mm = rows * grid.rows.native_spacing, cols * grid.cols.native_spacing
    size = (max(1, round(THUMBNAIL_HEIGHT * width_mm / height_mm)), THUMBNAIL_HEIGHT)
    _write_png(folder / "thumbnail.png", _thumbnail(*thumbnail_source, size))
    return CaseLayers(folder=folder, slices=slices, initial=initial, rows=rows, cols=cols, height_mm=height_mm,
                      width_mm=width_mm, image=window is not None, thumbnail=size)
