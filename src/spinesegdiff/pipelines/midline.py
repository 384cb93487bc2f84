"""The slice to segment, chosen by anatomy rather than by the array centre (issue 13).

The paper segments the central sagittal slice of the series, which is the spine's mid-sagittal plane only when
the field of view is centred on the spine. A user's scan may be centred elsewhere, and a slice a centimetre off
the midline cuts through the pedicles and foramina: the canal narrows or vanishes and the model draws less of
the spine (or things that are not there). The mid-sagittal slice is where the canal is widest and the spinous
processes show, so:

1. candidate slices within :data:`SEARCH_HALF_WIDTH_MM` of the centre (at most every :data:`SEARCH_STEP_MM`) are
   segmented by the presegmenter (the built-in U-Net: a few milliseconds a slice);
2. each candidate scores its canal area plus half the area of the posterior elements behind the canal
   (:func:`midline_score`, mm^2 on the 1 mm model grid);
3. a candidate whose canal does not lie behind its vertebrae (the rule the result check applies,
   :data:`~spinesegdiff.pipelines.checks.MAX_CANAL_BEHIND_MM`) is no mid-sagittal slice, whatever its score: on
   slices through the psoas or the foramina a presegmenter can take vessels or fat in front of the spine for
   canal, and the vertebra behind that false canal would count as spinous processes (an external scan's edge
   slice scored twice its centre that way);
4. the best remaining candidate is taken, unless none shows a canal of :data:`MIN_CANAL_MM2` (then the centre,
   and the report says why). Ties go to the candidate nearest the centre.

``predict --slice N`` names the slice instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from spinesegdiff.data.labels import SPINAL_CANAL, VERTEBRA
from spinesegdiff.data.preprocess import MODEL_SPACING_MM, SagittalGrid
from spinesegdiff.pipelines.checks import MAX_CANAL_BEHIND_MM, canal_behind_bodies_mm

SEARCH_HALF_WIDTH_MM = 30.0
"""Candidates lie within this distance of the central slice (the lumbar canal is 15-25 mm wide)."""
SEARCH_STEP_MM = 2.0
"""Candidates are at most this far apart (every slice of a scan with thicker slices)."""
MIN_CANAL_MM2 = 300.0
"""A mid-sagittal lumbar slice shows at least this much canal (SPIDER's central slices: 1,300 mm^2 and more)."""
POSTERIOR_WEIGHT = 0.5
"""Weight of the posterior elements' area (spinous processes) beside the canal's."""


@dataclass(frozen=True)
class SliceChoice:
    """Which sagittal slice was segmented and why (written to the report as ``slice``)."""

    index: int
    chosen_by: str  # "anatomy", "user", "centre" or "only" (a scan of one sagittal slice)
    reason: str
    scores: dict[int, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": self.index, "chosen_by": self.chosen_by, "reason": self.reason}
        if self.scores is not None:
            entry["scores_mm2"] = {str(k): round(v, 1) for k, v in self.scores.items()}
        return entry


def candidate_slices(grid: SagittalGrid) -> list[int]:
    """Sagittal indices within :data:`SEARCH_HALF_WIDTH_MM` of the centre, at most :data:`SEARCH_STEP_MM` apart."""
    spacing = max(grid.ras_spacing[0], 1e-6)
    reach = int(SEARCH_HALF_WIDTH_MM // spacing)
    step = max(1, int(SEARCH_STEP_MM // spacing))
    centre = grid.central_index
    offsets = sorted({0, *range(-reach, reach + 1, step)})
    return [centre + k for k in offsets if 0 <= centre + k < grid.num_sagittal]


def midline_score(labels: np.ndarray) -> tuple[float, float]:
    """``(canal mm^2, posterior elements mm^2)`` of one model-grid slice.

    The posterior elements are the vertebra pixels behind the canal: per row, those posterior to the canal's
    last pixel in that row (columns run anterior to posterior).
    """
    pixel = MODEL_SPACING_MM**2
    canal = labels == SPINAL_CANAL
    vertebra = labels == VERTEBRA
    rows = canal.any(axis=1)
    if not rows.any():
        return 0.0, 0.0
    last = np.where(rows, labels.shape[1] - 1 - np.argmax(canal[:, ::-1], axis=1), labels.shape[1])
    behind = vertebra & (np.arange(labels.shape[1])[None, :] > last[:, None])
    return float(canal.sum()) * pixel, float(behind.sum()) * pixel


def canal_behind_vertebrae(labels: np.ndarray) -> bool:
    """Whether the canal's mean column lies 0 to :data:`MAX_CANAL_BEHIND_MM` behind the vertebrae's on one
    ``(H, W)`` model-grid slice (columns anterior to posterior; the measure of the result check,
    :func:`~spinesegdiff.pipelines.checks.canal_behind_bodies_mm`); ``False`` without canal or vertebra."""
    behind = canal_behind_bodies_mm(labels)
    return behind is not None and 0.0 <= behind <= MAX_CANAL_BEHIND_MM


def choose_slice(candidates: list[int], labels: np.ndarray, central: int) -> SliceChoice:
    """The mid-sagittal slice among ``candidates`` given their ``(N, H, W)`` presegmentation labels."""
    scores: dict[int, float] = {}
    canals: dict[int, float] = {}
    for index, slice_labels in zip(candidates, labels, strict=True):
        canal, posterior = midline_score(slice_labels)
        scores[index] = canal + POSTERIOR_WEIGHT * posterior
        if canal_behind_vertebrae(slice_labels):
            canals[index] = canal
    if max(canals.values(), default=0.0) < MIN_CANAL_MM2:
        return SliceChoice(central, "centre", f"no candidate slice shows a spinal canal of {MIN_CANAL_MM2:g} mm^2 "
                                              "behind the vertebrae (the largest: "
                                              f"{max(canals.values(), default=0.0):.0f} mm^2)", scores)
    best = max(canals, key=lambda k: (scores[k], -abs(k - central)))
    if best == central:
        reason = "the central slice shows the widest canal and the spinous processes"
    else:
        reason = (f"widest canal and spinous processes {best - central:+d} slices from the centre "
                  f"({scores[best]:.0f} against {scores.get(central, 0.0):.0f} mm^2 at the centre)")
    return SliceChoice(best, "anatomy", reason, scores)
