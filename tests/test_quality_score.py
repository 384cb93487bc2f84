"""The per-scan quality score (issue 13): confidence near the structures, share removed, verdict."""

from __future__ import annotations

import numpy as np
import pytest

from spinesegdiff.pipelines.quality_score import OUT_OF_DISTRIBUTION_BELOW, UNCERTAINTY_SCALE, quality_score


def _case(uncertainty_inside: float, uncertainty_outside: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((320, 320), dtype=np.uint8)
    labels[100:200, 100:140] = 2
    uncertainty = np.full((320, 320), uncertainty_outside, dtype=np.float32)
    uncertainty[98:202, 98:142] = uncertainty_inside  # the structure and its 2 mm band
    return labels, uncertainty


def test_a_confident_plausible_result_scores_one() -> None:
    scored = quality_score(*_case(0.0))
    assert scored["score"] == 1.0 and not scored["out_of_distribution"]
    assert scored["factors"] == {"confidence": 1.0, "plausibility": 1.0, "judgement": 1.0}


def test_only_the_uncertainty_near_the_structures_counts() -> None:
    assert quality_score(*_case(0.1, uncertainty_outside=0.9))["score"] == pytest.approx(1 - 0.1 / UNCERTAINTY_SCALE)
    assert quality_score(*_case(0.9))["score"] == 0.0, "confidence never goes below 0"


def test_removed_area_and_a_doubtful_verdict_lower_the_score() -> None:
    labels, uncertainty = _case(0.0)
    kept = float((labels > 0).sum())
    assert quality_score(labels, uncertainty, removed_mm2=kept)["score"] == pytest.approx(0.5)
    assert quality_score(labels, uncertainty, verdict="doubtful")["score"] == pytest.approx(0.5)


def test_scores_rank_with_the_uncertainty_and_low_ones_are_flagged() -> None:
    scores = [quality_score(*_case(u))["score"] for u in (0.05, 0.1, 0.2, 0.3)]
    assert scores == sorted(scores, reverse=True)
    low = quality_score(*_case(UNCERTAINTY_SCALE * (1 - OUT_OF_DISTRIBUTION_BELOW) + 0.01))
    assert low["out_of_distribution"] and low["score"] < OUT_OF_DISTRIBUTION_BELOW


def test_no_structure_means_no_confidence() -> None:
    scored = quality_score(np.zeros((320, 320), dtype=np.uint8), np.zeros((320, 320), dtype=np.float32))
    assert scored["score"] == 0.0 and scored["out_of_distribution"]
