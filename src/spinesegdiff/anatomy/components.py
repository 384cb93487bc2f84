"""Pieces of a semantic label map: connected components, the canal's front, the spine's axis.

All geometry is in millimetres on the slice's own grid (rows superior -> inferior, columns anterior ->
posterior; see :mod:`spinesegdiff.anatomy.sagittal`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spinesegdiff.anatomy.sagittal import SagittalSlice


@dataclass(frozen=True)
class Component:
    """One connected piece of a mask: where it lies (``box`` slices and its ``local`` mask inside them), its
    centroid ``(row_mm, col_mm)``, area and contact with the image border."""

    box: tuple[slice, slice]
    local: np.ndarray
    centroid_mm: np.ndarray
    area_mm2: float
    touches_border: bool
    touches_bottom: bool

    def paint(self, target: np.ndarray, value: int) -> None:
        """Set the piece's pixels of ``target`` (same shape as the mask it came from) to ``value``."""
        target[self.box][self.local] = value


def components(mask: np.ndarray, scan: SagittalSlice) -> list[Component]:
    """The 4-connected components of ``mask``, largest first."""
    labelled, _ = ndimage.label(mask)
    found = []
    last_row, last_col = mask.shape[0] - 1, mask.shape[1] - 1
    for k, box in enumerate(ndimage.find_objects(labelled), start=1):
        local = labelled[box] == k
        rows, cols = np.nonzero(local)
        rows, cols = rows + box[0].start, cols + box[1].start
        found.append(Component(
            box=box,
            local=local,
            centroid_mm=np.array([rows.mean() * scan.row_mm, cols.mean() * scan.col_mm]),
            area_mm2=float(rows.size * scan.pixel_area_mm2),
            touches_border=bool(box[0].start == 0 or box[1].start == 0 or box[0].stop - 1 == last_row
                                or box[1].stop - 1 == last_col),
            touches_bottom=bool(box[0].stop - 1 == last_row),
        ))
    return sorted(found, key=lambda c: -c.area_mm2)


def anterior_of_canal(canal: np.ndarray, min_piece_pixels: float | None = None) -> np.ndarray | None:
    """Pixels in front of the spinal canal (boolean, same shape); ``None`` when there is no canal.

    A pixel is in front when the canal pixel nearest to it lies behind it, further posterior: for a pixel beside
    a tilted or lordotic canal the nearest canal pixel lies along the canal's local normal, so the test follows
    the canal's own direction, not the image rows. The canal is its largest component, and with
    ``min_piece_pixels`` also every component of at least that many pixels (a canal interrupted at a stenosis).
    """
    labelled, count = ndimage.label(canal)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labelled), labelled, index=np.arange(1, count + 1))
    kept = sizes == sizes.max() if min_piece_pixels is None else (sizes >= min_piece_pixels) | (sizes == sizes.max())
    pieces = np.isin(labelled, 1 + np.flatnonzero(kept))
    _, (_, nearest_cols) = ndimage.distance_transform_edt(~pieces, return_indices=True)
    return np.arange(canal.shape[1])[None, :] < nearest_cols


class SpineAxis:
    """A polyline through points ordered superior -> inferior; :meth:`position` is the arc length (mm) of a
    point's closest point on it, extended straight beyond both ends (so it orders levels top to bottom)."""

    def __init__(self, points_mm: np.ndarray) -> None:
        points = np.asarray(points_mm, dtype=float).reshape(-1, 2)
        points = points[np.argsort(points[:, 0], kind="stable")]
        if len(points) == 1:
            points = np.vstack([points, points + np.array([1.0, 0.0])])  # a single point: a vertical axis through it
        if len(points) == 0:
            points = np.array([[0.0, 0.0], [1.0, 0.0]])
        self.points = points
        steps = np.diff(points, axis=0)
        self.lengths = np.maximum(np.linalg.norm(steps, axis=1), 1e-9)
        self.directions = steps / self.lengths[:, None]
        self.starts = np.concatenate([[0.0], np.cumsum(self.lengths)[:-1]])

    def position(self, point: np.ndarray) -> float:
        offsets = np.asarray(point, dtype=float) - self.points[:-1]
        along = np.einsum("ij,ij->i", offsets, self.directions)
        last = len(self.lengths) - 1
        clipped = along.copy()
        clipped[:last] = np.minimum(clipped[:last], self.lengths[:last])
        clipped[1:] = np.maximum(clipped[1:], 0.0)
        nearest = self.points[:-1] + clipped[:, None] * self.directions
        distances = np.linalg.norm(nearest - point, axis=1)
        k = int(np.argmin(distances))
        return float(self.starts[k] + clipped[k])

    def tangent(self, point: np.ndarray) -> np.ndarray:
        """Unit direction (superior -> inferior) of the segment closest to ``point``."""
        centres = self.points[:-1] + self.directions * self.lengths[:, None] / 2
        return self.directions[int(np.argmin(np.linalg.norm(centres - point, axis=1)))]


def nearest_label(labels: np.ndarray, scan: SagittalSlice) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel, the nonzero label of ``labels`` nearest to it and the distance (mm) to that label."""
    distance, (rows, cols) = ndimage.distance_transform_edt(labels == 0, sampling=(scan.row_mm, scan.col_mm),
                                                            return_indices=True)
    return labels[rows, cols], distance
