"""A per-scan quality score that predicts failure, from the uncertainty map and the plausibility checks (issue 13).

The score, in [0, 1] (higher is better), multiplies three factors measured on the segmented model-grid slice:

- confidence: ``1 - u / UNCERTAINTY_SCALE`` (at least 0), with ``u`` the mean uncertainty over the structures
  and a :data:`BAND_MM` band around them (where a wrong boundary shows as doubt);
- plausibility: ``1 - removed share``, the share of the predicted structure area that the anatomical clean-up
  (:mod:`~spinesegdiff.pipelines.plausibility`) removed;
- judgement: 1 for an ``ok`` verdict of :func:`~spinesegdiff.pipelines.checks.spine_quality`, :data:`DOUBTFUL_FACTOR`
  for a ``doubtful`` one.

Measured (``docs/RESULTS.md``, "Generalisation"): on the 33 SPIDER patients, each segmented by the U-Net of the
fold that held it out (uncertainty: its entropy), the score's Spearman rank correlation with the patient's mean
Dice is 0.80. A scan is flagged ``out_of_distribution`` when its score falls below
:data:`OUT_OF_DISTRIBUTION_BELOW`, set below every real scan the shipped pipeline has scored: with the models and
sampling shipped on 2026-11-29, 0.765-0.858 on the 33 SPIDER scans (in-sample), 0.752-0.842 on the 18 external 2D T2
scans (``benchmarks/quality_scores.py``). The scale belongs to the shipped
pipeline's uncertainty (diffusion samples); a presegmenter's own mask (``T_pre = 0``) is less certain and scores
lower (0.64-0.77 on the held-out slices above).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from spinesegdiff.data.preprocess import MODEL_SPACING_MM

BAND_MM = 2.0
"""The structures are widened by this much before the uncertainty is averaged."""
UNCERTAINTY_SCALE = 0.5
"""A mean uncertainty of this much (half the maximum entropy) leaves no confidence."""
DOUBTFUL_FACTOR = 0.5
"""A result that does not look like a whole lumbar spine keeps half its score."""
OUT_OF_DISTRIBUTION_BELOW = 0.70
"""Scores below this are flagged (the lowest of 51 real scans with the shipped pipeline: 0.752; module doc)."""


def quality_score(labels: np.ndarray, uncertainty: np.ndarray, *, removed_mm2: float = 0.0,
                  verdict: str = "ok") -> dict[str, Any]:
    """Score one segmented model-grid slice.

    Args:
        labels: ``(320, 320)`` classes after the clean-up (0 background).
        uncertainty: ``(320, 320)`` entropy heatmap in [0, 1].
        removed_mm2: structure area the clean-up removed from this slice.
        verdict: ``ok`` or ``doubtful`` (an implausible result is refused before it is scored).

    Returns:
        ``{"score": s, "out_of_distribution": bool, "factors": {"confidence", "plausibility", "judgement"},
        "band_uncertainty": u}``, numbers rounded to 4 decimals.
    """
    structures = labels > 0
    band = ndimage.binary_dilation(structures, iterations=max(1, round(BAND_MM / MODEL_SPACING_MM)))
    u = float(uncertainty[band].mean()) if band.any() else 1.0
    kept_mm2 = float(structures.sum()) * MODEL_SPACING_MM**2
    factors = {
        "confidence": max(0.0, 1.0 - u / UNCERTAINTY_SCALE),
        "plausibility": 1.0 - removed_mm2 / max(kept_mm2 + removed_mm2, 1e-6),
        "judgement": 1.0 if verdict == "ok" else DOUBTFUL_FACTOR,
    }
    score = float(np.prod(list(factors.values())))
    return {"score": round(score, 4), "out_of_distribution": score < OUT_OF_DISTRIBUTION_BELOW,
            "factors": {k: round(v, 4) for k, v in factors.items()}, "band_uncertainty": round(u, 4)}
