"""A segmented sagittal slice in millimetres, and the geometry shared by the level modules.

Convention (what :func:`spinesegdiff.data.preprocess.native_slice` returns): rows run superior -> inferior,
columns anterior -> posterior, on the scan's own pixel grid. Points are ``(row_mm, col_mm)`` pairs measured
from the centre of pixel ``(0, 0)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from spinesegdiff.data.labels import DISC, SPINAL_CANAL, VERTEBRA
from spinesegdiff.data.preprocess import SagittalGrid, native_slice


@dataclass(frozen=True)
class SagittalSlice:
    """One segmented sagittal slice and its pixel size.

    Attributes:
        labels: ``(rows, cols)`` classes 0 background, 1 spinal canal, 2 vertebra, 3 disc.
        row_mm: pixel size along the rows (superior -> inferior), mm.
        col_mm: pixel size along the columns (anterior -> posterior), mm.
        image: ``(rows, cols)`` intensities (any scale), or ``None``: no signal measures.
        uncertainty: ``(rows, cols)`` entropy heatmap in [0, 1], or ``None`` (a reference mask: certain).
        index: the slice's sagittal index in its scan (reported, not used).
    """

    labels: np.ndarray
    row_mm: float
    col_mm: float
    image: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        if self.labels.ndim != 2:
            raise ValueError(f"labels must be 2D (rows, cols), got shape {self.labels.shape}")
        for name in ("image", "uncertainty"):
            other = getattr(self, name)
            if other is not None and other.shape != self.labels.shape:
                raise ValueError(f"{name} shape {other.shape} differs from labels {self.labels.shape}")
        if not (self.row_mm > 0 and self.col_mm > 0):
            raise ValueError(f"pixel sizes must be positive, got {self.row_mm} x {self.col_mm} mm")

    @property
    def pixel_area_mm2(self) -> float:
        return self.row_mm * self.col_mm

    @property
    def canal(self) -> np.ndarray:
        return self.labels == SPINAL_CANAL

    @cached_property
    def canal_inner(self) -> np.ndarray:
        """The canal one pixel in from its edge (the CSF, away from partial-volume edges)."""
        from scipy import ndimage

        return ndimage.binary_erosion(self.canal)

    @property
    def vertebra(self) -> np.ndarray:
        return self.labels == VERTEBRA

    @property
    def disc(self) -> np.ndarray:
        return self.labels == DISC

    def points_mm(self, mask: np.ndarray) -> np.ndarray:
        """``(n, 2)`` ``(row_mm, col_mm)`` of the pixels of ``mask``."""
        rows, cols = pixel_indices(mask)
        return np.column_stack([rows * self.row_mm, cols * self.col_mm]).astype(float)


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """The rows and columns of a 2D ``mask``'s pixels, grown by ``margin`` (clipped), or ``None`` when it is empty.

    Two reductions instead of :func:`scipy.ndimage.find_objects` or ``np.nonzero`` over the whole slice: about
    10x faster for one structure on a slice, where the level report spends its time.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, mask.shape[0])),
            slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, mask.shape[1])))


def pixel_indices(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2D ``mask``, in its order, searched only within its :func:`bounding_box`."""
    box = bounding_box(mask)
    if box is None:
        return np.nonzero(mask)
    found_rows, found_cols = np.nonzero(mask[box])
    return found_rows + box[0].start, found_cols + box[1].start


def scan_slice(
    labels_zyx: np.ndarray,
    grid: SagittalGrid,
    index: int,
    *,
    image_zyx: np.ndarray | None = None,
    uncertainty_zyx: np.ndarray | None = None,
) -> SagittalSlice:
    """Sagittal slice ``index`` of a scan's label map (and image, heatmap) on its own grid, in mm."""
    return SagittalSlice(
        labels=np.asarray(native_slice(labels_zyx, grid, index)),
        row_mm=float(grid.rows.native_spacing),
        col_mm=float(grid.cols.native_spacing),
        image=None if image_zyx is None else np.asarray(native_slice(image_zyx, grid, index), dtype=np.float32),
        uncertainty=None if uncertainty_zyx is None
        else np.asarray(native_slice(uncertainty_zyx, grid, index), dtype=np.float32),
        index=int(index),
    )


def mid_sagittal_index(indices: Sequence[int], grid: SagittalGrid) -> int:
    """Of the segmented slices ``indices``, the one closest to the scan's central sagittal slice."""
    return min(indices, key=lambda k: abs(k - grid.central_index))


@dataclass(frozen=True)
class Frame:
    """A local frame in the slice: ``centre`` ``(row_mm, col_mm)``, ``along`` (unit, points anterior) and
    ``across`` (unit, points inferior), perpendicular to each other."""

    centre: np.ndarray
    along: np.ndarray
    across: np.ndarray

    def coordinates(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)``: signed distances (mm) of ``(n, 2)`` points along ``along`` and ``across``."""
        shifted = np.asarray(points, dtype=float) - self.centre
        return shifted @ self.along, shifted @ self.across


ANTERIOR = np.array([0.0, -1.0])
INFERIOR = np.array([1.0, 0.0])


def oriented_frame(centre: np.ndarray, across: np.ndarray) -> Frame:
    """The frame whose ``across`` axis is ``across`` turned to point inferior, ``along`` anterior."""
    across = np.asarray(across, dtype=float) / np.linalg.norm(across)
    if across @ INFERIOR < 0:
        across = -across
    along = np.array([-across[1], across[0]])
    if along @ ANTERIOR < 0:
        along = -along
    return Frame(centre=np.asarray(centre, dtype=float), along=along, across=across)


def principal_frame(points: np.ndarray) -> Frame:
    """Frame of a flat structure (a disc): ``along`` its long principal axis, ``across`` its short one."""
    centre = points.mean(axis=0)
    if len(points) < 3:
        return oriented_frame(centre, INFERIOR)
    _, vectors = np.linalg.eigh(np.cov((points - centre).T))
    return oriented_frame(centre, vectors[:, 0])  # smallest eigenvalue: the short axis


STRUCTURE_CLASSES = {"vertebra": VERTEBRA, "disc": DISC}
