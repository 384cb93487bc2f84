"""Segment a canvas larger than the network's 320 x 320 window by overlapping windows.

The networks are trained on 320 x 320 slices at 1 mm, which holds SPIDER's whole field of view. Many clinical
series are larger (a 2D TSE lumbar series often covers 380 mm, a whole-spine series more); cropping them to the
central 320 mm would leave the vertebrae near the edges unsegmented. When
:func:`~spinesegdiff.data.preprocess.plan_grid` is asked to cover the field of view, slices come on a larger
canvas, and this module segments them as nnU-Net does: in windows of the network's own size that overlap by at
least :data:`MIN_OVERLAP` pixels, each output blended with weights that fall off towards a window's inner edges
(where the network saw least context), then normalised by the summed weights.
Every network thus sees a window of the size it was trained on.

:class:`Tiling` cuts ``(N, H, W)`` canvases into ``(N * k, 320, 320)`` windows and joins per-pixel outputs back;
:func:`segment_canvas` and :func:`presegment_canvas` wrap a segmenter's ``segment`` and a presegmenter; a canvas of
exactly 320 x 320 passes straight through (no copy, no blending).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spinesegdiff.data.preprocess import MODEL_SIZE
from spinesegdiff.pipelines.results import ARRAY_FIELDS, SliceSegmentation

MIN_OVERLAP = 64
"""Least overlap in pixels (mm) between neighbouring windows, so that no seam is drawn from one window alone."""
EDGE_RAMP = 32
"""Width in pixels of a window's blending ramp at an edge inside the canvas (weight ``1/EDGE_RAMP`` at the edge,
rising linearly to 1); at the canvas' own border a window keeps full weight."""


def window_starts(size: int, window: int = MODEL_SIZE, min_overlap: int = MIN_OVERLAP) -> list[int]:
    """First pixel of each window along an axis of ``size`` pixels: the fewest windows of ``window`` pixels that
    cover it with at least ``min_overlap`` between neighbours, spread evenly (``[0]`` when ``size == window``).

    Raises:
        ValueError: ``size`` smaller than the window, or an overlap that leaves no stride.
    """
    if size < window:
        raise ValueError(f"a canvas side of {size} pixels is smaller than the {window}-pixel window")
    if not 0 <= min_overlap < window:
        raise ValueError(f"min_overlap must lie in [0, {window}), got {min_overlap}")
    if size == window:
        return [0]
    count = int(np.ceil((size - window) / (window - min_overlap))) + 1
    return [round(k * (size - window) / (count - 1)) for k in range(count)]


def _axis_weights(start: int, window: int, size: int) -> np.ndarray:
    """``(window,)`` blending weights in ``(0, 1]`` of the window at ``start`` on an axis of ``size`` pixels."""
    position = np.arange(window, dtype=np.float32) + 0.5
    weights = np.ones(window, dtype=np.float32)
    if start > 0:  # the window's first edge lies inside the canvas
        weights = np.minimum(weights, position / EDGE_RAMP)
    if start + window < size:
        weights = np.minimum(weights, (window - position) / EDGE_RAMP)
    return np.maximum(weights, 1.0 / EDGE_RAMP)


Region = tuple[int, int, int, int]
"""``(first row, end row, first column, end column)`` of a canvas, ends exclusive."""


def starts_over(first: int, end: int, size: int, window: int = MODEL_SIZE) -> list[int]:
    """Window starts covering pixels ``[first, end)`` of an axis of ``size`` pixels (:func:`window_starts` over that
    span, widened to one window about its centre where shorter, and kept inside the axis)."""
    length = min(size, max(end - first, window))
    offset = int(np.clip(round((first + end - length) / 2), 0, size - length))
    return [offset + start for start in window_starts(length, window)]


@dataclass(frozen=True)
class Tiling:
    """The windows of an ``(H, W)`` canvas: all of it (:meth:`of`) or a region of it (:meth:`around`).

    Attributes:
        height, width: the canvas, at least ``window`` each.
        row_starts, col_starts: first row and first column of the windows (every pair is a window).
        window: the network's side (320).
    """

    height: int
    width: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]
    window: int = MODEL_SIZE

    @classmethod
    def of(cls, images: np.ndarray, window: int = MODEL_SIZE) -> Tiling:
        """The windows covering the whole canvas of ``(..., H, W)`` images."""
        return cls.around(images, None, window)

    @classmethod
    def around(cls, images: np.ndarray, region: Region | None, window: int = MODEL_SIZE) -> Tiling:
        """The fewest windows covering ``region`` of the canvas of ``(..., H, W)`` images (``None``: all of it)."""
        height, width = int(images.shape[-2]), int(images.shape[-1])
        first_row, end_row, first_col, end_col = region if region is not None else (0, height, 0, width)
        return cls(height, width, tuple(starts_over(first_row, end_row, height, window)),
                   tuple(starts_over(first_col, end_col, width, window)), window)

    @property
    def windows(self) -> list[tuple[int, int]]:
        """``(row, column)`` of each window's top-left pixel, row by row."""
        return [(r, c) for r in self.row_starts for c in self.col_starts]

    @property
    def is_single(self) -> bool:
        """The canvas is one window (nothing to cut or blend)."""
        return self.height == self.window and self.width == self.window

    def split(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` -> ``(N * k, window, window)``: the ``k`` windows of slice 0, then of slice 1, ..."""
        w = self.window
        return np.stack([image[r:r + w, c:c + w] for image in images for r, c in self.windows])

    def join(self, tiles: np.ndarray, *, background_channel: int | None = None) -> np.ndarray:
        """``(N * k, ..., window, window)`` per-pixel outputs -> ``(N, ..., H, W)`` float32, the blended mean.

        Pixels no window covers are 0, and 1 in ``background_channel`` (axis 1 of the output) when one is named.

        Raises:
            ValueError: the number of tiles is not a multiple of the windows per slice.
        """
        windows, w = self.windows, self.window
        if len(tiles) % len(windows):
            raise ValueError(f"{len(tiles)} tiles do not split into slices of {len(windows)} windows")
        tiles = np.asarray(tiles, dtype=np.float32)
        count = len(tiles) // len(windows)
        out = np.zeros((count, *tiles.shape[1:-2], self.height, self.width), dtype=np.float32)
        total = np.zeros((self.height, self.width), dtype=np.float32)
        for k, (r, c) in enumerate(windows):
            weight = np.outer(_axis_weights(r, w, self.height), _axis_weights(c, w, self.width))
            out[..., r:r + w, c:c + w] += tiles[k::len(windows)] * weight
            total[r:r + w, c:c + w] += weight
        covered = total > 0
        out = np.where(covered, out / np.where(covered, total, 1.0), 0.0).astype(np.float32)
        if background_channel is not None:
            out[:, background_channel][:, ~covered] = 1.0
        return out


SPINE_MARGIN = 32
"""Pixels (mm) kept around the presegmenter's spine when only that region is refined (:func:`segment_canvas`)."""


def spine_region(class_probabilities: np.ndarray, margin: int = SPINE_MARGIN) -> Region | None:
    """The bounding box of every pixel of ``(N, 4, H, W)`` class probabilities whose most likely class is a
    structure, over all slices, widened by ``margin`` and kept inside the canvas; ``None`` when there is none."""
    return spine_region_of_labels(np.asarray(class_probabilities).argmax(axis=1), margin)


def spine_region_of_labels(labels: np.ndarray, margin: int = SPINE_MARGIN) -> Region | None:
    """:func:`spine_region` of ``(N, H, W)`` class maps (0 background)."""
    foreground = (np.asarray(labels) > 0).any(axis=0)
    if not foreground.any():
        return None
    rows, cols = np.nonzero(foreground.any(axis=1))[0], np.nonzero(foreground.any(axis=0))[0]
    height, width = foreground.shape
    return (max(0, int(rows[0]) - margin), min(height, int(rows[-1]) + 1 + margin),
            max(0, int(cols[0]) - margin), min(width, int(cols[-1]) + 1 + margin))


def model_grid_summary(grid) -> dict:
    """What the JSON report says of a scan's model grid (a :class:`~spinesegdiff.data.preprocess.SagittalGrid`):
    its size and spacing, and whether the scan's field of view was larger than even a grown grid (then cropped
    to its centre)."""
    return {"rows": int(grid.rows.model_size), "cols": int(grid.cols.model_size),
            "spacing_mm": float(grid.rows.model_spacing), "cropped": grid.rows.crops or grid.cols.crops}


def join_segmentations(tiling: Tiling, tiles: SliceSegmentation) -> SliceSegmentation:
    """Window results -> canvas results: every map blended (:meth:`Tiling.join`; background where no window
    reached), the labels the argmax of the blended class probabilities (as every sampler makes them), the
    network calls summed."""
    arrays = {name: tiling.join(getattr(tiles, name), background_channel=0 if name == "class_probabilities" else None)
              for name in ARRAY_FIELDS if name != "labels"}
    arrays["labels"] = arrays["class_probabilities"].argmax(axis=1).astype(np.uint8)
    return SliceSegmentation(**arrays, network_calls=tiles.network_calls)


def segment_canvas(segment: Callable[..., SliceSegmentation], images: np.ndarray, *,
                   presegmenter: Callable[[np.ndarray], np.ndarray] | None = None,
                   progress: Callable[[int], object] | None = None) -> SliceSegmentation:
    """``segment`` (a segmenter's ``segment``: ``(n, 320, 320) uint8 -> SliceSegmentation``) on ``(N, H, W)``
    canvases of any size >= 320.

    With the segmenter's ``presegmenter`` (a refining segmenter) only the windows around the spine it finds
    (:func:`spine_region`) are sampled, and the rest of the canvas is background, as the presegmentation says;
    without, every window is. ``progress`` is called with whole slices finished, as ``segment`` does.
    """
    images = np.asarray(images)
    tiling = Tiling.of(images)
    if tiling.is_single:
        return segment(images) if progress is None else segment(images, progress=progress)
    if presegmenter is not None:
        tiling = Tiling.around(images, spine_region(presegment_canvas(presegmenter, images)))
    per_slice = len(tiling.windows)
    done = [0]

    def windows_done(count: int) -> None:  # the sampler counts windows; the caller counts slices
        before = done[0] // per_slice
        done[0] += count
        if done[0] // per_slice > before:
            progress(done[0] // per_slice - before)

    tiles = tiling.split(images)
    result = segment(tiles) if progress is None else segment(tiles, progress=windows_done)
    return join_segmentations(tiling, result)


def presegment_canvas(presegmenter: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *,
                      region: Region | None = None) -> np.ndarray:
    """A presegmenter (``(n, 320, 320) uint8 -> (n, 4, 320, 320)`` class probabilities) on ``(N, H, W)``
    canvases of any size >= 320 -> ``(N, 4, H, W)`` float32 class probabilities; with ``region`` only the
    windows around it are run (background elsewhere)."""
    images = np.asarray(images)
    tiling = Tiling.around(images, region)
    if tiling.is_single:
        return np.asarray(presegmenter(images), dtype=np.float32)
    return tiling.join(np.asarray(presegmenter(tiling.split(images)), dtype=np.float32), background_channel=0)
