"""Scoring against references that label one structure only (the external 2D T2 data, issue 13).

``../shared/data/external-t2-2d`` holds two sources: ``vb/`` labels vertebral **bodies** only (SPIDER's vertebra
class also covers the posterior elements), ``ivd/`` labels the five lumbar discs only. Everything a reference
does not label is unknown, not background, so a plain Dice would punish correct posterior elements and
thoracic discs. The scores here follow the data's README:

- bodies: the predicted vertebra class is scored only within ``margin_mm`` of the reference bodies (Dice), and
  the recall of the bodies (share of reference body pixels predicted as vertebra) is reported beside it;
- discs: the predicted disc class is scored only within the cranio-caudal extent of the labelled discs plus
  ``margin_mm`` (Dice);
- far in front: the share of all predicted structure pixels that lie more than ``limit_mm`` in front of the
  spine's anterior border (taken row by row from the reference, the most anterior pixel within 10 mm of the row,
  held constant above and below the reference): vertebrae, canal or discs drawn in the abdomen or the psoas.

All functions take one sagittal slice in the radiological view of
:func:`~spinesegdiff.data.preprocess.native_slice`: ``(rows, cols)`` with rows running superior to inferior and
columns anterior to posterior, and the row and column spacings in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from spinesegdiff.data.labels import DISC, VERTEBRA

BORDER_WINDOW_MM = 10.0
"""The spine's anterior border at a row is the most anterior reference pixel within this distance above or below."""


def _dice(prediction: np.ndarray, reference: np.ndarray) -> float | None:
    total = int(prediction.sum()) + int(reference.sum())
    return None if total == 0 else 2.0 * float(np.logical_and(prediction, reference).sum()) / total


def _within(mask: np.ndarray, spacing: tuple[float, float], margin_mm: float) -> np.ndarray:
    """Pixels within ``margin_mm`` (Euclidean, in mm) of ``mask``."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing)
    return distance <= margin_mm


def body_scores(labels: np.ndarray, bodies: np.ndarray, spacing: tuple[float, float], *,
                margin_mm: float = 3.0) -> dict[str, float | None]:
    """Dice of the vertebra class near the reference bodies, and the bodies' recall.

    Args:
        labels: ``(rows, cols)`` predicted classes (0 background, 1 canal, 2 vertebra, 3 disc).
        bodies: ``(rows, cols)`` reference body mask (any non-zero value).
        spacing: row and column spacing in mm.
        margin_mm: the predicted vertebra class counts within this distance of a reference body.

    Returns:
        ``{"body_dice": ..., "body_recall": ...}``, ``None`` where undefined (no reference and no prediction).
    """
    reference = bodies > 0
    near = _within(reference, spacing, margin_mm)
    predicted = (labels == VERTEBRA) & near
    recall = None if not reference.any() else float((predicted & reference).sum()) / float(reference.sum())
    return {"body_dice": _dice(predicted, reference), "body_recall": recall}


def disc_scores(labels: np.ndarray, discs: np.ndarray, spacing: tuple[float, float], *,
                margin_mm: float = 5.0) -> dict[str, float | None]:
    """Dice of the disc class within the rows of the labelled discs (plus ``margin_mm`` above and below).

    Returns:
        ``{"disc_dice": ...}``; ``None`` when neither the reference nor the scored prediction has a pixel.
    """
    reference = discs > 0
    rows = np.zeros_like(reference)
    labelled = np.flatnonzero(reference.any(axis=1))
    if labelled.size:
        extra = int(np.ceil(margin_mm / spacing[0]))
        rows[max(0, labelled[0] - extra): labelled[-1] + extra + 1, :] = True
    return {"disc_dice": _dice((labels == DISC) & rows, reference)}


def anterior_border(spine: np.ndarray, window_rows: int = 0) -> np.ndarray | None:
    """Per row, the column of the spine's most anterior pixel within ``window_rows`` rows above or below, filled
    in above and below the labelled rows (nearest labelled row) and interpolated between them; ``None`` for an
    empty mask. Shape ``(rows,)``.

    The window keeps a row that holds only a sliver of the reference (an endplate's edge, a posterior corner)
    from moving the border backwards.
    """
    labelled = spine.any(axis=1)
    rows = np.flatnonzero(labelled)
    if rows.size == 0:
        return None
    first = np.where(labelled, np.argmax(spine, axis=1), spine.shape[1]).astype(np.float64)
    if window_rows > 0:
        first = ndimage.minimum_filter1d(first, size=2 * window_rows + 1, mode="nearest")
    return np.interp(np.arange(spine.shape[0]), rows, first[rows])


def far_in_front_fraction(labels: np.ndarray, spine: np.ndarray, spacing: tuple[float, float], *,
                          limit_mm: float = 15.0) -> float | None:
    """Share of the predicted structure pixels more than ``limit_mm`` in front of the spine's anterior border.

    Args:
        labels: ``(rows, cols)`` predicted classes.
        spine: ``(rows, cols)`` reference mask of the anterior spine (bodies or discs).
        spacing: row and column spacing in mm (columns run anterior to posterior).

    Returns:
        A fraction in [0, 1]; ``None`` when nothing is predicted or the reference is empty.
    """
    border = anterior_border(spine > 0, window_rows=round(BORDER_WINDOW_MM / spacing[0]))
    predicted = labels > 0
    if border is None or not predicted.any():
        return None
    columns = np.arange(labels.shape[1])[None, :]
    in_front = columns < (border[:, None] - limit_mm / spacing[1])
    return float((predicted & in_front).sum()) / float(predicted.sum())
