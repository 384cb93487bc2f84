"""How well an uncertainty map points at errors, and how calibrated the probabilities are.

* :func:`error_detection_scores`: AUROC and AUPR of the uncertainty as a detector of wrong pixels, inside a
  band around the structures (true or predicted, dilated), where errors can happen at all;
* :func:`uncertainty_error_overlap`: UEO, the best Dice between the thresholded uncertainty and the error map;
* :func:`expected_calibration_error` and :func:`brier_score` of the class probabilities.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def evaluation_band(prediction: np.ndarray, truth: np.ndarray, margin: int = 5) -> np.ndarray:
    """Pixels within ``margin`` pixels of a foreground pixel of either label map (boolean, same shape)."""
    foreground = (np.asarray(prediction) > 0) | (np.asarray(truth) > 0)
    if margin <= 0:
        return foreground
    structure = ndimage.generate_binary_structure(foreground.ndim, 1)
    return ndimage.binary_dilation(foreground, structure=structure, iterations=margin)


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half): the probability that a random positive scores above a
    random negative. NaN when one class is absent."""
    scores, positives = np.asarray(scores, dtype=float).ravel(), np.asarray(positives, dtype=bool).ravel()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)  # average ranks handle ties
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, over distinct thresholds).
    NaN when there are no positives."""
    scores, positives = np.asarray(scores, dtype=float).ravel(), np.asarray(positives, dtype=bool).ravel()
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], positives[order]
    true_positives = np.cumsum(hits)
    # evaluate only at the last index of each run of equal scores (a threshold takes all ties together)
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    precision = true_positives[last] / (last + 1)
    recall = true_positives[last] / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def error_detection_scores(uncertainty: np.ndarray, prediction: np.ndarray, truth: np.ndarray,
                           margin: int = 5) -> dict[str, float]:
    """AUROC and AUPR of ``uncertainty`` for the wrong pixels of ``prediction`` within the band, and the error
    rate there (the AUPR of a useless map)."""
    band = evaluation_band(prediction, truth, margin)
    errors = (np.asarray(prediction) != np.asarray(truth))[band]
    scores = np.asarray(uncertainty, dtype=float)[band]
    return {"auroc": auroc(scores, errors), "aupr": average_precision(scores, errors),
            "error_rate": float(errors.mean()) if errors.size else float("nan")}


def uncertainty_error_overlap(uncertainty: np.ndarray, prediction: np.ndarray, truth: np.ndarray,
                              thresholds: np.ndarray | None = None) -> float:
    """UEO: the largest Dice, over thresholds ``tau``, between ``uncertainty > tau`` and the error map.
    1 when there are no errors and no uncertain pixel at the best threshold."""
    errors = np.asarray(prediction) != np.asarray(truth)
    values = np.asarray(uncertainty, dtype=float)
    thresholds = np.linspace(0.0, 1.0, 101)[:-1] if thresholds is None else thresholds
    best = 0.0
    error_count = int(errors.sum())
    for tau in thresholds:
        flagged = values > tau
        total = int(flagged.sum()) + error_count
        dice = 1.0 if total == 0 else 2.0 * int((flagged & errors).sum()) / total
        best = max(best, dice)
    return best


def expected_calibration_error(class_probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence: ``sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|``.

    Args:
        class_probabilities: ``(K, ...)`` probabilities summing to 1 over the first axis.
        truth: ``(...)`` integer labels.
    """
    probs = np.asarray(class_probabilities, dtype=float)
    confidence = probs.max(axis=0).ravel()
    correct = (probs.argmax(axis=0) == np.asarray(truth)).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            total += members.sum() / confidence.size * abs(correct[members].mean() - confidence[members].mean())
    return float(total)


def brier_score(class_probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Mean over pixels of ``sum_k (p_k - onehot_k)^2`` (0 perfect, 2 worst)."""
    probs = np.asarray(class_probabilities, dtype=float)
    onehot = np.stack([np.asarray(truth) == k for k in range(probs.shape[0])]).astype(float)
    return float(((probs - onehot) ** 2).sum(axis=0).mean())
