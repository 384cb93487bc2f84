"""Anatomical plausibility after sampling: keep what belongs to the spine, drop what cannot (issue 13).

On scans unlike the training data (off-centre slices, other scanners and contrasts) the model sometimes draws a
vertebra, a disc or a canal in the abdomen or the psoas. The rule here removes such parts from each segmented
model-grid slice (1 mm pixels, rows superior to inferior, columns anterior to posterior):

1. the spine is grown from the slice's column, its stack of bodies and discs (:func:`_slice_column`; without
   one, from the largest connected part of all structure pixels): another part (canal, vertebrae, discs) joins
   when it lies within :data:`MAX_GAP_MM` of the spine grown so far (a missing disc leaves a gap of about one
   disc height, and the spinous processes lie across the canal, so the whole spine is kept; a structure in the
   abdomen or the psoas, more than a centimetre from anything, is not). The anchor is the stack, not the largest
   part: far beside the midline the bodies are separate parts, and the bladder taken for vertebra and disc can
   outweigh each of them (on vb2-12 15 mm off the midline, the largest part as anchor removed the whole spine);
2. a canal part of the spine is kept only when the vertebral bodies lie in front of it: at the rows it spans,
   at least :data:`MIN_FRONT_SHARE` as much vertebra and disc lies in front of it as behind it (a vessel drawn
   as canal along the front of the bodies has the whole column behind it);
3. parts under :data:`MIN_PART_MM2` are dropped (real results hold at most 0.5 % of their area in such parts);
   so are disc pixels more than :data:`DISC_MAX_IN_FRONT_MM` in front of the same slice's vertebrae (a disc lies
   between two bodies; on a lateral slice, whose bodies recede behind the mid-sagittal front, rule 4 alone
   leaves such pixels);
4. in a volume (``--volume``), the anterior border of the mid-sagittal slice's column bounds every slice (see
   :func:`plausible_probabilities`): parts centred more than :data:`MAX_IN_FRONT_MM` in front of it are dropped,
   and so is every pixel that far in front (a psoas taken for vertebrae can join the spine on a lateral slice,
   and its part's centre then lies close enough); a canal part centred in front of the border is dropped too
   (the canal lies behind the bodies, never in front of their front). Where this removed anything, rules 1-3
   run again on the slice: the vertebrae that made a canal part pass rule 2 may have been among what went;
5. a one-slice scan (``predict``'s chosen slice, or a scan of one sagittal slice) has no mid-sagittal slice, so
   rule 4 takes the border from the slice's own column (rule 1's stack of bodies and discs).
   Beside the midline the bodies are separate parts and a psoas or bowel loop taken for vertebrae can be the
   largest part of the slice, with a vessel taken for canal joining it to the spine (rules 1 and 2 then keep
   it): on the external 2D T2 scans 8-10 mm from the midline, up to 30 % of the predicted pixels lay more than
   15 mm in front of the spine before this rule, none after (``benchmarks/off_midline.py``).

Removed pixels become background; their probability mass moves to the background class, so the label map
restored on the scan's grid follows, while the uncertainty map is left as the sampler made it (it still shows
where the model hesitated). What was removed is reported per structure in mm^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from spinesegdiff.data.labels import DISC, SPINAL_CANAL, STRUCTURE_ABBREVIATIONS, VERTEBRA
from spinesegdiff.data.preprocess import MODEL_SPACING_MM
from spinesegdiff.pipelines.midline import canal_behind_vertebrae

MAX_GAP_MM = 12.0
"""A part joins the spine within this distance of it (a lumbar disc is 8-12 mm high)."""
MAX_IN_FRONT_MM = 15.0
"""In a volume, parts centred further than this in front of the mid-sagittal column are removed (the front of
the vertebral bodies is the spine's front; the aorta and the psoas lie further forward)."""
DISC_MAX_IN_FRONT_MM = 10.0
"""Disc pixels further than this in front of their slice's vertebrae are removed (the annulus bulges a few mm past
the bodies' rims; on SPIDER's reference masks, all nine slices of 33 patients, 10 mm removes 31 of 498,290 disc
pixels, all of scoliotic patient 50's; 15 mm removes 2)."""
MIN_FRONT_SHARE = 0.5
"""A canal part is kept when the column in front of it (the bodies) is at least half the column behind it."""
MIN_PART_MM2 = 20.0
"""Connected parts smaller than this are dropped."""
MIN_ANCHOR_MM2 = 300.0
"""Below this the largest part is no anchor (no spine found): nothing is removed, the quality check judges the
result."""
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class Cleanup:
    """What :func:`plausible_labels` removed from one or more slices: mm^2 per structure and parts removed."""

    removed_mm2: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STRUCTURE_ABBREVIATIONS, 0.0))
    parts_removed: int = 0
    per_slice_mm2: list[float] = field(default_factory=list)
    """The structure area removed from each slice, in the order the slices were cleaned."""

    def add(self, other: Cleanup) -> None:
        """Count what ``other`` removed from the next slice."""
        self.add_removed(other)
        self.per_slice_mm2.append(sum(other.removed_mm2.values()))

    def add_removed(self, other: Cleanup) -> None:
        """Count what ``other`` removed from the same slice (a second pass over it)."""
        for key, value in other.removed_mm2.items():
            self.removed_mm2[key] = self.removed_mm2.get(key, 0.0) + value
        self.parts_removed += other.parts_removed

    def to_dict(self) -> dict:
        return {"removed_mm2": {k: round(v, 1) for k, v in self.removed_mm2.items()},
                "parts_removed": self.parts_removed}


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Distance in mm from every pixel to ``mask`` (infinite where ``mask`` is empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask) * MODEL_SPACING_MM


def _slice_column(labels: np.ndarray) -> np.ndarray | None:
    """One slice's own spinal column: the vertebra and disc pixels of the stack with the largest area among the
    stacks that hold a disc (among all when none does), where a stack is what joins when each part reaches
    :data:`MAX_GAP_MM` / 2 up and down and one pixel to either side; ``None`` when the slice has no stack of
    :data:`MIN_ANCHOR_MM2`.

    Bodies and discs lie one above the other; on a slice beside the midline the bodies are often separate parts
    (the discs between them undrawn), so they are joined vertically, not across: a psoas or bowel loop taken for
    vertebrae lies in front, and the posterior elements behind, the canal's width away. The posterior elements
    (vertebra class too) can outweigh the bodies, but they never hold a disc."""
    column = _without_small_parts((labels == VERTEBRA) | (labels == DISC))
    reach = round(MAX_GAP_MM / 2 / MODEL_SPACING_MM)
    stacks, count = ndimage.label(ndimage.binary_dilation(column, structure=np.ones((2 * reach + 1, 3), dtype=bool)),
                                  structure=_EIGHT)
    if count == 0:
        return None
    areas = np.bincount(stacks[column], minlength=count + 1)
    disc_areas = np.bincount(stacks[column & (labels == DISC)], minlength=count + 1) * MODEL_SPACING_MM**2
    with_disc = disc_areas >= MIN_PART_MM2
    if with_disc.any():
        areas = np.where(with_disc, areas, 0)
    largest = int(areas.argmax())
    if areas[largest] * MODEL_SPACING_MM**2 < MIN_ANCHOR_MM2:
        return None
    return column & (stacks == largest)


def _grown_spine(labels: np.ndarray) -> np.ndarray | None:
    """The spine: the parts of the slice's column (:func:`_slice_column`; without one, the largest part of all
    structures) and every part reachable from them in steps of at most :data:`MAX_GAP_MM`; ``None`` when
    nothing is large enough to anchor it.

    The anchor is the column, not simply the largest part: beside the midline the bodies are separate parts, and
    the bladder or a bowel loop taken for spine can outweigh each of them, though not their stack."""
    structures = labels > 0
    parts, count = ndimage.label(structures, structure=_EIGHT)
    if count == 0:
        return None
    column = _slice_column(labels)
    if column is not None:
        kept = set(np.unique(parts[column]).tolist()) - {0}
    else:
        sizes = np.bincount(parts.ravel(), minlength=count + 1)
        sizes[0] = 0
        if sizes.max() * MODEL_SPACING_MM**2 < MIN_ANCHOR_MM2:
            return None
        kept = {int(sizes.argmax())}
    while True:
        near = _distance_to(np.isin(parts, list(kept))) <= MAX_GAP_MM
        reached = set(np.unique(parts[near & structures]).tolist()) - {0}
        if reached <= kept:
            return np.isin(parts, list(kept))
        kept |= reached


def _anterior_border(column: np.ndarray) -> np.ndarray:
    """Per row, the most anterior column pixel within 10 mm above or below (interpolated where no row has any)."""
    labelled = column.any(axis=1)
    rows = np.flatnonzero(labelled)
    first = np.where(labelled, np.argmax(column, axis=1), column.shape[1]).astype(np.float64)
    first = ndimage.minimum_filter1d(first, size=2 * round(10.0 / MODEL_SPACING_MM) + 1, mode="nearest")
    return np.interp(np.arange(column.shape[0]), rows, first[rows])


def _column_around(part: np.ndarray, column: np.ndarray) -> tuple[int, int]:
    """Column pixels in front of and behind ``part``, row by row over the rows it spans."""
    rows = np.flatnonzero(part.any(axis=1))
    first = np.argmax(part[rows], axis=1)
    last = part.shape[1] - 1 - np.argmax(part[rows, ::-1], axis=1)
    columns = np.arange(part.shape[1])[None, :]
    in_front = column[rows] & (columns < first[:, None])
    behind = column[rows] & (columns > last[:, None])
    return int(in_front.sum()), int(behind.sum())


def _canal_not_in_front(canal: np.ndarray, column: np.ndarray) -> np.ndarray:
    """The canal parts with the vertebral bodies in front of them: at the rows a part spans, at least
    :data:`MIN_FRONT_SHARE` as much column (bodies, discs) lies in front of it as behind it (the posterior
    elements). A vessel drawn as canal along the front of the bodies has nearly all of the column behind it."""
    parts, count = ndimage.label(canal, structure=_EIGHT)
    keep = np.zeros(count + 1, dtype=bool)
    for k in range(1, count + 1):
        in_front, behind = _column_around(parts == k, column)
        keep[k] = in_front >= MIN_FRONT_SHARE * behind and in_front > 0
    return keep[parts]


def _front_of(mask: np.ndarray) -> np.ndarray | None:
    """The anterior border of ``mask`` per row (:func:`_anterior_border`), NaN above and below its rows; ``None``
    for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    border = _anterior_border(mask)
    border[: rows[0]] = np.nan
    border[rows[-1] + 1:] = np.nan
    return border


def _far_in_front(mask: np.ndarray, border: np.ndarray | None, limit_mm: float = MAX_IN_FRONT_MM) -> np.ndarray:
    """The pixels of ``mask`` more than ``limit_mm`` in front of ``border`` (one column per row, NaN where nothing
    is judged)."""
    if border is None:
        return np.zeros(mask.shape, dtype=bool)
    with np.errstate(invalid="ignore"):  # NaN rows compare False
        far = np.arange(mask.shape[1])[None, :] < (border - limit_mm / MODEL_SPACING_MM)[:, None]
    return mask & far


def _without_small_parts(mask: np.ndarray) -> np.ndarray:
    parts, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return mask
    sizes = np.bincount(parts.ravel(), minlength=count + 1)
    keep = sizes * MODEL_SPACING_MM**2 >= MIN_PART_MM2
    keep[0] = False
    return keep[parts]


def plausible_labels(labels: np.ndarray) -> tuple[np.ndarray, Cleanup]:
    """Remove the parts of one model-grid slice that cannot belong to the lumbar spine.

    Args:
        labels: ``(320, 320)`` classes (0 background, 1 canal, 2 vertebra, 3 disc), rows superior to inferior,
            columns anterior to posterior, :data:`~spinesegdiff.data.preprocess.MODEL_SPACING_MM` pixels.

    Returns:
        The kept labels (same shape and dtype; removed pixels are 0) and what was removed.
    """
    spine = _grown_spine(labels)
    if spine is None:
        return labels, Cleanup()
    column = spine & ((labels == VERTEBRA) | (labels == DISC))
    keep = np.zeros(labels.shape, dtype=bool)
    for value in (VERTEBRA, DISC):
        keep |= _without_small_parts((labels == value) & spine)
    keep |= _without_small_parts(_canal_not_in_front((labels == SPINAL_CANAL) & spine, column))
    keep &= ~_far_in_front(labels == DISC, _front_of(keep & (labels == VERTEBRA)), DISC_MAX_IN_FRONT_MM)
    removed = (labels > 0) & ~keep
    cleanup = Cleanup()
    for value, abbreviation in zip((SPINAL_CANAL, VERTEBRA, DISC), STRUCTURE_ABBREVIATIONS, strict=True):
        cleanup.removed_mm2[abbreviation] = float((removed & (labels == value)).sum()) * MODEL_SPACING_MM**2
    cleanup.parts_removed = int(ndimage.label(removed, structure=_EIGHT)[1])
    return np.where(keep, labels, 0).astype(labels.dtype), cleanup


def _parts_in_front(mask: np.ndarray, border: np.ndarray, margin_mm: float) -> tuple[np.ndarray, int]:
    """The parts of ``mask`` whose centre lies more than ``margin_mm`` in front of ``border`` (one column per
    row), and how many there are."""
    parts, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool), 0
    drop = np.zeros(count + 1, dtype=bool)
    centres = ndimage.center_of_mass(mask, parts, range(1, count + 1))
    for k, (row, col) in enumerate(centres, start=1):
        limit = border[round(row)]  # NaN above and below the reference column: nothing is judged there
        drop[k] = bool(col < limit - margin_mm / MODEL_SPACING_MM)
    return drop[parts], int(drop.sum())


def _in_front_of(labels: np.ndarray, border: np.ndarray) -> tuple[np.ndarray, int]:
    """What :func:`plausible_probabilities` removes from one slice of a volume given the mid-sagittal column's
    anterior ``border`` (one column per row, NaN where there is none): parts centred more than
    :data:`MAX_IN_FRONT_MM` in front of it, every pixel that far in front, and canal parts centred in front of
    it; with the number of parts removed whole."""
    parts, count = _parts_in_front(labels > 0, border, MAX_IN_FRONT_MM)
    canal, canal_count = _parts_in_front((labels == SPINAL_CANAL) & ~parts, border, 0.0)  # not counted twice
    return parts | canal | _far_in_front(labels > 0, border), count + canal_count


def _volume_border(labels: np.ndarray) -> np.ndarray | None:
    """The spinal column's anterior border on the slice that shows the most canal behind its vertebrae (the
    mid-sagittal one; :func:`~spinesegdiff.pipelines.midline.canal_behind_vertebrae`, any slice when none
    does), per row, NaN above and below the column; ``None`` when no slice has a column."""
    canal = (labels == SPINAL_CANAL).sum(axis=(1, 2))
    behind = np.array([canal_behind_vertebrae(slice_labels) for slice_labels in labels])
    reference = labels[int(np.argmax(np.where(behind, canal, -1)))] if behind.any() else labels[int(np.argmax(canal))]
    spine = _grown_spine(reference)
    if spine is None:
        return None
    # NaN above and below: the spine may curve away beyond the part the slice shows
    return _front_of(spine & ((reference == VERTEBRA) | (reference == DISC)))


def _slice_border(labels: np.ndarray) -> np.ndarray | None:
    """The anterior border of one slice's own column (:func:`_slice_column`) per row, NaN above and below it;
    ``None`` when there is none. It bounds a one-slice scan, which has no mid-sagittal slice to take it from."""
    column = _slice_column(labels)
    return None if column is None else _front_of(column)


def plausible_probabilities(class_probabilities: np.ndarray, labels: np.ndarray,
                            ) -> tuple[np.ndarray, np.ndarray, Cleanup]:
    """Apply :func:`plausible_labels` to ``N`` slices and move the removed pixels' mass to the background.

    With several slices of one scan (``--volume``), a slice beside the spine may hold no spine at all, only
    structures drawn where none are (the psoas taken for vertebrae): there the largest part is no anchor. So the
    column's anterior border on the slice with the most canal (the mid-sagittal one) also bounds every other
    slice: parts whose centre lies more than :data:`MAX_IN_FRONT_MM` in front of it are removed. One slice alone
    (``N = 1``) is bounded by its own stack of bodies and discs (rule 5 of the module).

    Args:
        class_probabilities: ``(N, 4, H, W)`` float32, background first, summing to 1.
        labels: ``(N, H, W)`` their argmax, the slices of one scan on the same model grid.

    Returns:
        The adjusted probabilities (a copy, still summing to 1), the kept labels ``(N, H, W)`` and what was
        removed over all slices.
    """
    probabilities = class_probabilities.copy()
    kept_labels = np.empty_like(labels)
    total = Cleanup()
    border = _volume_border(labels) if labels.shape[0] > 1 else _slice_border(labels[0])
    for n in range(labels.shape[0]):
        kept_labels[n], cleanup = plausible_labels(labels[n])
        if border is not None:
            in_front, parts = _in_front_of(kept_labels[n], border)
            for value, abbreviation in zip((SPINAL_CANAL, VERTEBRA, DISC), STRUCTURE_ABBREVIATIONS, strict=True):
                cleanup.removed_mm2[abbreviation] += float((in_front & (kept_labels[n] == value)).sum())
            cleanup.parts_removed += parts
            kept_labels[n][in_front] = 0
            if in_front.any():  # what was removed may have been all a canal part had in front of it (rule 2)
                kept_labels[n], again = plausible_labels(kept_labels[n])
                cleanup.add_removed(again)
        removed = (labels[n] > 0) & (kept_labels[n] == 0)
        if removed.any():
            slice_probabilities = probabilities[n]  # a view: (4, H, W)
            slice_probabilities[0, removed] += slice_probabilities[1:, removed].sum(axis=0)
            slice_probabilities[1:, removed] = 0.0
        total.add(cleanup)
    return probabilities, kept_labels, total
