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


@dataclass(frozen=True)
class Tiling:
    """The windows of an ``(H, W)`` canvas.

    Attributes:
        height, width: the canvas, at least ``window`` each.
        window: the network's side (320).
    """

    height: int
    width: int
    window: int = MODEL_SIZE

    @classmethod
    def of(cls, images: np.ndarray, window: int = MODEL_SIZE) -> Tiling:
        """The tiling of ``(..., H, W)`` images."""
        return cls(int(images.shape[-2]), int(images.shape[-1]), window)

    @property
    def windows(self) -> list[tuple[int, int]]:
        """``(row, column)`` of each window's top-left pixel, row by row."""
        return [(r, c) for r in window_starts(self.height, self.window) for c in window_starts(self.width, self.window)]

    @property
    def is_single(self) -> bool:
        return self.height == self.window and self.width == self.window

    def split(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` -> ``(N * k, window, window)``: the ``k`` windows of slice 0, then of slice 1, ..."""
        w = self.window
        return np.stack([image[r:r + w, c:c + w] for image in images for r, c in self.windows])

    def join(self, tiles: np.ndarray) -> np.ndarray:
        """``(N * k, ..., window, window)`` per-pixel outputs -> ``(N, ..., H, W)`` float32, the blended mean.

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
        return out / total


def join_segmentations(tiling: Tiling, tiles: SliceSegmentation) -> SliceSegmentation:
    """Window results -> canvas results: every map blended (:meth:`Tiling.join`), the labels the argmax of the
    blended class probabilities (as every sampler makes them), the network calls summed."""
    arrays = {name: tiling.join(getattr(tiles, name)) for name in ARRAY_FIELDS if name != "labels"}
    arrays["labels"] = arrays["class_probabilities"].argmax(axis=1).astype(np.uint8)
    return SliceSegmentation(**arrays, network_calls=tiles.network_calls)


def segment_canvas(segment: Callable[..., SliceSegmentation], images: np.ndarray, *,
                   progress: Callable[[int], object] | None = None) -> SliceSegmentation:
    """``segment`` (a segmenter's ``segment``: ``(n, 320, 320) uint8 -> SliceSegmentation``) on ``(N, H, W)``
    canvases of any size >= 320; ``progress`` is called with whole slices finished, as ``segment`` does."""
    images = np.asarray(images)
    tiling = Tiling.of(images)
    if tiling.is_single:
        return segment(images) if progress is None else segment(images, progress=progress)
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


def presegment_canvas(presegmenter: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """A presegmenter (``(n, 320, 320) uint8 -> (n, 4, 320, 320)`` class probabilities) on ``(N, H, W)``
    canvases of any size >= 320 -> ``(N, 4, H, W)`` float32 class probabilities."""
    images = np.asarray(images)
    tiling = Tiling.of(images)
    if tiling.is_single:
        return np.asarray(presegmenter(images), dtype=np.float32)
    return tiling.join(np.asarray(presegmenter(tiling.split(images)), dtype=np.float32))
