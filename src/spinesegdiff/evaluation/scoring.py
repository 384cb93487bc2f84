"""Per-case scores of a prediction set: overlap, boundary distances, and the quality of its uncertainty.

All on the 320 x 320 model grid (1 mm pixels, so distances are in mm), against the cached ground truth.
"""

from __future__ import annotations

import math

import numpy as np

from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS
from spinesegdiff.data.splits import patient_of
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.evaluation.surface_metrics import distances_per_class
from spinesegdiff.evaluation.uncertainty_metrics import (
    brier_score,
    error_detection_scores,
    expected_calibration_error,
    uncertainty_error_overlap,
)

MODEL_GRID_SPACING_MM = (1.0, 1.0)
BAND_MARGIN_PX = 5
"""Uncertainty is judged on pixels within 5 mm of a true or predicted structure (the rest is trivially right)."""


def score_case(labels: np.ndarray, truth: np.ndarray, class_probabilities: np.ndarray,
               uncertainty: np.ndarray) -> dict[str, float]:
    """Scores of one slice.

    Args:
        labels: ``(H, W)`` predicted classes; ``truth``: ``(H, W)`` true classes.
        class_probabilities: ``(4, H, W)``; ``uncertainty``: ``(H, W)`` in [0, 1].

    Returns:
        ``dice_SC``.. ``hd95_SC``.. ``assd_SC``.. (mm; ``nan`` where one mask is empty), ``mDice``, and
        ``auroc``, ``aupr``, ``error_rate``, ``ueo``, ``ece``, ``brier``, ``mean_uncertainty``.
    """
    dice = dice_per_class(labels, truth)
    hd, sd = distances_per_class(labels, truth, MODEL_GRID_SPACING_MM)
    row: dict[str, float] = {}
    for k, name in enumerate(STRUCTURE_ABBREVIATIONS):
        row[f"dice_{name}"] = float(dice[k])
        row[f"hd95_{name}"] = float(hd[k]) if math.isfinite(hd[k]) else float("nan")
        row[f"assd_{name}"] = float(sd[k]) if math.isfinite(sd[k]) else float("nan")
    row["mDice"] = float(dice.mean())
    probs = np.asarray(class_probabilities, dtype=np.float32)
    heat = np.asarray(uncertainty, dtype=np.float32)
    row.update(error_detection_scores(heat, labels, truth, margin=BAND_MARGIN_PX))
    row["ueo"] = uncertainty_error_overlap(heat, labels, truth)
    row["ece"] = expected_calibration_error(probs, truth)
    row["brier"] = brier_score(probs, truth)
    row["mean_uncertainty"] = float(heat.mean())
    return row


def score_prediction_set(prediction, truth_by_case: dict[str, np.ndarray],
                         contrast_by_case: dict[str, str]) -> list[dict]:
    """One row per case: ``system``, ``case``, ``patient``, ``contrast`` and :func:`score_case`'s scores."""
    rows = []
    for index, case in enumerate(prediction.cases):
        scores = score_case(prediction.labels[index], truth_by_case[case], prediction.class_probabilities[index],
                            prediction.uncertainty[index])
        rows.append({"system": prediction.name, "case": case, "patient": patient_of(case),
                     "contrast": contrast_by_case.get(case, ""), **scores})
    return rows


def summarise(rows: list[dict], keys: list[str]) -> dict[str, tuple[float, float, int]]:
    """``{key: (mean, std, n)}`` over rows, ignoring NaN (n counts the values used)."""
    summary = {}
    for key in keys:
        values = np.asarray([row[key] for row in rows], dtype=float)
        values = values[~np.isnan(values)]
        summary[key] = (float(values.mean()) if values.size else float("nan"),
                        float(values.std()) if values.size else float("nan"), int(values.size))
    return summary
