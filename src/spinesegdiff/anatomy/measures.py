"""Per-level measurements in millimetres on the slice's own grid, each with the uncertainty of its pixels.

Every length is measured along the structure's own axes, not the image rows, so a tilted or lordotic spine
reads true:

* **disc height**: the disc's principal axes give its frame (long axis anterior-posterior, short axis along
  the spine); the height at a position is the disc's pixel count in a strip :func:`strip_mm` wide across the
  disc over the strip's pixel count per mm of length; the disc height is the mean of the anterior, middle and
  posterior heights
  (strips centred :data:`EDGE_SHARE` of the disc's length in from each end, and at its middle);
* **vertebral body height**: the same on the body (the vertebra in front of the canal), in the frame of the
  adjacent discs (their mean short axis), or the body's own principal axis nearest the image's vertical;
* **disc height index**: disc height over the mean height of the adjacent whole bodies;
* **depth index** (:func:`depth_indices`; in the report beside the height index): disc
  height over the mean AP depth of the adjacent whole bodies (:func:`body_depth_mm`), over its level's normal
  height in the literature relative to the mean lumbar disc (:func:`level_factor`);
* **canal AP diameter** at a disc: the canal's extent in a strip through the disc's centre along its long
  axis, behind the disc (pixel count over pixels per mm, as for heights);
* **disc signal ratio**: mean intensity of the disc's nucleus (its central half, one pixel in from its edge)
  over the mean canal (CSF) intensity behind it; only when the slice's contrast is T2-like (:func:`is_t2_like`);
* **slip** of a vertebra over the one below: in the disc's frame, the offset of the posterior edge of the
  upper body's lower endplate band over the lower body's upper endplate band (:func:`endplate_band`; positive:
  anterior, mm and % of the lower endplate's length); against the disc's lower surface where the lower
  vertebra is the unlabelled sacrum.

Uncertainty: each measure is also taken on the *confident* pixels (entropy below :data:`UNCERTAIN_ENTROPY`)
and on the *generous* ones (adding the uncertain pixels, of any class, within :data:`UNCERTAIN_REACH_MM`);
the report gives ``[low, high]`` over the three, and the mean entropy of the structure's edge pixels. A
reference mask (no heatmap) gives a zero-width range.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spinesegdiff.anatomy.instances import Level, SpineLevels
from spinesegdiff.anatomy.sagittal import (
    INFERIOR,
    Frame,
    SagittalSlice,
    bounding_box,
    oriented_frame,
    principal_frame,
)

UNCERTAIN_ENTROPY = 0.4
"""Normalised entropy from which a pixel counts as uncertain (a 70/30 split between two classes is 0.44)."""
UNCERTAIN_REACH_MM = 2.0
"""How far from a structure its uncertain rim is searched for the generous pixel set."""
EDGE_SHARE = 0.2
"""The anterior and posterior heights are taken this share of the structure's length in from its ends."""
STRIP_MM = 3.0
ENDPLATE_BAND_MM = 5.0
ENDPLATE_REACH_MM = 4.0
"""A 1 mm bin belongs to the surface facing the disc when its edge lies this close to the surface's extreme
(an endplate is curved by 1-3 mm); further bins hold the body's anterior or posterior wall."""
DISC_SURFACE_MM = 2.0
"""Band of a disc's lower surface that stands for the sacrum's endplate when the sacrum is not labelled."""
CANAL_SEARCH_MM = 40.0
NUCLEUS_SHARE = 0.5
T2_CANAL_OVER_BODY = 1.0
"""T2-like: the canal's (CSF) median intensity exceeds the bodies' median by this factor."""

Variant = Callable[[np.ndarray], np.ndarray]


def strip_mm(scan: SagittalSlice) -> float:
    """Width of a measuring strip: :data:`STRIP_MM`, at least two pixels."""
    return max(STRIP_MM, 2 * max(scan.row_mm, scan.col_mm))


def heights_in_frame(points: np.ndarray, frame: Frame, scan: SagittalSlice) -> tuple[float, float, float] | None:
    """Anterior, middle and posterior heights (mm) of the pixels ``points`` across ``frame``; ``None`` if empty.

    A height is the structure's pixel count in a strip across it over the strip's pixel count per millimetre
    of length (:func:`strip_pixels_per_mm`), so the pixel grid's steps do not bias it at any angle.
    """
    if len(points) < 3:
        return None
    along, _ = frame.coordinates(points)
    low, high = np.percentile(along, [1, 99])
    length = high - low
    width = strip_mm(scan)
    positions = (high - EDGE_SHARE * length, (low + high) / 2, low + EDGE_SHARE * length)
    return tuple(float(np.sum(np.abs(along - s) <= width / 2) / strip_pixels_per_mm(scan, frame, s, width))
                 for s in positions)


def strip_pixels_per_mm(scan: SagittalSlice, frame: Frame, position: float, width: float,
                        reach: float = 15.0) -> float:
    """Pixel centres per millimetre of length in the strip ``|along - position| <= width / 2`` of ``frame``,
    counted on the slice's grid over ``reach`` mm either side of the frame's centre."""
    centre = frame.centre + position * frame.along
    half = reach + width
    rows = np.arange(np.floor((centre[0] - half) / scan.row_mm), np.ceil((centre[0] + half) / scan.row_mm) + 1)
    cols = np.arange(np.floor((centre[1] - half) / scan.col_mm), np.ceil((centre[1] + half) / scan.col_mm) + 1)
    grid = np.stack(np.meshgrid(rows * scan.row_mm, cols * scan.col_mm, indexing="ij"), axis=-1).reshape(-1, 2)
    along, across = frame.coordinates(grid)
    inside = (np.abs(along - position) <= width / 2) & (np.abs(across) <= reach)
    return max(float(inside.sum()) / (2 * reach), 1e-9)


CONTRASTS = {True: "T2-like", False: "not T2-like", None: "unknown"}
"""The reports' names of :func:`is_t2_like`'s answers (``quality.contrast``, ``levels.contrast``)."""


def is_t2_like(scan: SagittalSlice) -> bool | None:
    """Is the slice's contrast T2-like (bright CSF over the bodies)? ``None`` without an image or structures."""
    if scan.image is None or not scan.canal.any() or not scan.vertebra.any():
        return None
    return bool(np.median(scan.image[scan.canal]) > T2_CANAL_OVER_BODY * np.median(scan.image[scan.vertebra]))


def dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """:func:`scipy.ndimage.binary_dilation` computed in the mask's bounding box only (same result)."""
    out = np.zeros_like(mask, dtype=bool)
    box = bounding_box(mask, iterations + 1)
    if box is not None:
        out[box] = ndimage.binary_dilation(mask[box], iterations=iterations)
    return out


def erode(mask: np.ndarray) -> np.ndarray:
    """:func:`scipy.ndimage.binary_erosion` (one step) computed in the mask's bounding box only."""
    out = np.zeros_like(mask, dtype=bool)
    box = bounding_box(mask, 1)
    if box is not None:
        out[box] = ndimage.binary_erosion(mask[box])
    return out


@dataclass(frozen=True)
class Variants:
    """The three pixel sets of a structure: as segmented, confident only, and with its uncertain rim."""

    scan: SagittalSlice

    def all(self) -> tuple[Variant, ...]:
        """The pixel-set functions: as segmented, then (with a heatmap) confident, then generous."""
        if self.scan.uncertainty is None:
            return (lambda mask: mask,)
        uncertain = self.scan.uncertainty >= UNCERTAIN_ENTROPY
        reach = max(1, round(UNCERTAIN_REACH_MM / min(self.scan.row_mm, self.scan.col_mm)))

        def generous(mask: np.ndarray) -> np.ndarray:  # the boundary may lie anywhere in the uncertain rim
            return mask | (dilate(mask, reach) & uncertain)

        return (lambda mask: mask), (lambda mask: mask & ~uncertain), generous

    def edge_entropy(self, mask: np.ndarray) -> float | None:
        """Mean entropy of the structure's edge pixels (``None`` without a heatmap or pixels)."""
        if self.scan.uncertainty is None or not mask.any():
            return None
        edge = mask & ~erode(mask)
        return float(self.scan.uncertainty[edge].mean())


def span(values: list[float | None]) -> list[float] | None:
    """``[low, high]`` of the defined values (``None`` when none is)."""
    defined = [v for v in values if v is not None and np.isfinite(v)]
    return [float(min(defined)), float(max(defined))] if defined else None


def disc_frame(scan: SagittalSlice, levels: SpineLevels, disc: Level) -> Frame:
    """The disc's own frame: its long principal axis points anterior, its short one inferior."""
    return principal_frame(scan.points_mm(levels.mask(disc)))


def body_frame(scan: SagittalSlice, body: np.ndarray, neighbour_frames: list[Frame]) -> Frame:
    """The frame of a body: the adjacent discs' mean short axis, else its principal axis nearest vertical."""
    points = scan.points_mm(body)
    centre = points.mean(axis=0) if len(points) else np.zeros(2)
    if neighbour_frames:
        return oriented_frame(centre, np.mean([f.across for f in neighbour_frames], axis=0))
    if len(points) < 3:
        return oriented_frame(centre, INFERIOR)
    _, vectors = np.linalg.eigh(np.cov((points - centre).T))
    return oriented_frame(centre, max(vectors.T, key=lambda v: abs(v @ INFERIOR)))


def canal_ap_mm(canal: np.ndarray, disc_points: np.ndarray, frame: Frame, scan: SagittalSlice,
                width: float | None = None) -> tuple[float | None, np.ndarray]:
    """Canal AP diameter (mm) behind a disc, and the canal pixels of the strip (boolean over ``canal``'s pixels).

    ``None`` when the strip meets no canal.
    """
    width = strip_mm(scan) if width is None else width
    points = scan.points_mm(canal)
    if not len(points) or not len(disc_points):
        return None, np.zeros(len(points), dtype=bool)
    posterior_edge = np.percentile(frame.coordinates(disc_points)[0], 1)
    along, across = frame.coordinates(points)
    inside = (np.abs(across) <= width / 2) & (along < posterior_edge + 5.0) & (
        along > posterior_edge - CANAL_SEARCH_MM)
    if not inside.any():
        return None, inside
    turned = Frame(centre=frame.centre, along=frame.across, across=frame.along)  # the strip runs along the disc
    return float(inside.sum() / strip_pixels_per_mm(scan, turned, 0.0, width)), inside


def signal_ratio(scan: SagittalSlice, disc: np.ndarray, frame: Frame, disc_points: np.ndarray) -> float | None:
    """Mean intensity of the disc's nucleus over the mean CSF intensity of the canal behind it.

    The nucleus is the disc's inner pixels (one pixel in from its edge) in the central half of its length
    (:data:`NUCLEUS_SHARE`), which the Pfirrmann grade judges; the CSF is the canal's inner pixels in a strip
    twice the usual width through the disc's centre.
    """
    if scan.image is None:
        return None
    inner = erode(disc)
    inner = inner if inner.sum() >= 10 else disc
    along, _ = frame.coordinates(scan.points_mm(inner))
    low, high = np.percentile(along, [1, 99])
    nucleus = np.abs(along - (low + high) / 2) <= NUCLEUS_SHARE / 2 * (high - low)
    csf = scan.canal_inner
    _, inside = canal_ap_mm(csf, disc_points, frame, scan, width=2 * strip_mm(scan))
    if not inside.any() or not nucleus.any():
        return None
    csf_mean = float(scan.image[csf][inside].mean())
    return float(scan.image[inner][nucleus].mean() / csf_mean) if csf_mean > 0 else None


def endplate_band(points: np.ndarray, frame: Frame, *, lower: bool,
                  band_mm: float = ENDPLATE_BAND_MM) -> np.ndarray:
    """The points within ``band_mm`` of a structure's surface across ``frame`` (``lower``: its lower surface,
    as the upper body's facing the disc below it), followed 1 mm bin by 1 mm bin along the frame so a
    curved or wedged endplate keeps its whole length."""
    if not len(points):
        return points
    along, across = frame.coordinates(points)
    facing = across if lower else -across
    bins = np.floor(along).astype(int)
    order = np.argsort(bins, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(bins[order])) + 1]
    edge = np.empty_like(facing)
    edge[order] = np.repeat(np.maximum.reduceat(facing[order], starts), np.diff(np.r_[starts, len(order)]))
    surface = edge >= np.percentile(facing, 98) - ENDPLATE_REACH_MM  # not the walls beyond the endplate's ends
    return points[surface & (facing >= edge - band_mm)]


def slip(upper: np.ndarray, lower: np.ndarray, frame: Frame) -> tuple[float, float] | None:
    """Anterior offset (mm, %) of ``upper``'s posterior edge over ``lower``'s, along ``frame``'s long axis.

    ``upper`` and ``lower`` are the ``(n, 2)`` points of the two bands facing the disc; ``None`` if one is empty.
    """
    if len(upper) < 3 or len(lower) < 3:
        return None
    upper_along, _ = frame.coordinates(upper)
    lower_along, _ = frame.coordinates(lower)
    back_upper, back_lower = np.percentile(upper_along, 2), np.percentile(lower_along, 2)
    length = float(np.ptp(lower_along))  # the lower endplate's length, end to end
    offset = float(back_upper - back_lower)
    return offset, float(100 * offset / length) if length > 0 else float("nan")



LITERATURE_DISC_HEIGHT_MM: dict[int, float] = {1: 10.56, 2: 11.44, 3: 10.71, 4: 9.64, 5: 8.37}
"""Mean mid-sagittal MRI disc height (mm) by disc rank (1 = L5-S1 ... 5 = L1-L2) in 106 asymptomatic adults:
I. G. Shukri, K. A. Mahmood, S. A. Abdulrahman, A morphometric study of the lumbar spine in asymptomatic
subjects in Sulaimani city by magnetic resonance imaging, Journal of Sulaimani Medical College 3(1), 2013,
doi:10.17656/jsmc.10028. Only the pattern across levels is used (:func:`level_factor`)."""


def level_factor(rank: int | None) -> float | None:
    """How high a normal disc of this rank is relative to the mean normal lumbar disc
    (:data:`LITERATURE_DISC_HEIGHT_MM`; discs above L1-L2, for which the source has no value, take L1-L2's);
    ``None`` without a rank."""
    if rank is None or rank < 1:
        return None
    normal = LITERATURE_DISC_HEIGHT_MM[min(rank, max(LITERATURE_DISC_HEIGHT_MM))]
    return normal / float(np.mean(list(LITERATURE_DISC_HEIGHT_MM.values())))


def body_depth_mm(points: np.ndarray, frame: Frame, scan: SagittalSlice) -> float | None:
    """A body's AP depth (mm) along ``frame``'s long axis, through the middle of its height (its pixel count in a
    strip :func:`strip_mm` wide over the strip's pixels per mm, as for heights); ``None`` for under 3 points."""
    if len(points) < 3:
        return None
    _, across = frame.coordinates(points)
    low, high = np.percentile(across, [1, 99])
    middle, width = (low + high) / 2, strip_mm(scan)
    turned = Frame(centre=frame.centre, along=frame.across, across=frame.along)  # the strip runs along the disc
    return float(np.sum(np.abs(across - middle) <= width / 2) / strip_pixels_per_mm(scan, turned, middle, width))


def depth_index(height_mm: float | None, depths_mm: list[float | None], rank: int | None) -> float | None:
    """Disc height over the mean AP depth of its adjacent whole bodies, over its level's :func:`level_factor`.

    Depth rather than height of the bodies: Frobin et al. (Clin. Biomech. 12 Suppl. 1, 1997) relate disc height
    to vertebral depth, which neither magnification nor a body's loss of height changes; the level factor
    takes out the normal increase of disc height from L1-L2 to L4-L5 that a radiologist keeps in mind when
    calling one disc narrowed. ``None`` without a height, a depth or a rank."""
    depths = [d for d in depths_mm if d]
    factor = level_factor(rank)
    if height_mm is None or not depths or factor is None:
        return None
    return height_mm / float(np.mean(depths)) / factor


def depth_indices(scan: SagittalSlice, levels: SpineLevels, heights_mm: dict[int, float | None]
                  ) -> dict[int, float | None]:
    """:func:`depth_index` of every named disc (``heights_mm``: its reported height by rank; a partial disc has
    none), the bodies' depths taken along the disc's own long axis (:func:`disc_frame`)."""
    out: dict[int, float | None] = {}
    for disc in levels.discs:
        if disc.rank is None:
            continue
        frame = disc_frame(scan, levels, disc)
        depths = []
        for rank in (disc.rank, disc.rank - 1):  # the body above, the body below (none over the sacrum)
            body = levels.by_rank("vertebra", rank)
            if body is not None and not body.partial:
                depths.append(body_depth_mm(scan.points_mm(levels.body(body)), frame, scan))
        out[disc.rank] = depth_index(heights_mm.get(disc.rank), depths, disc.rank)
    return out
