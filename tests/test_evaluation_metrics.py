"""Surface distances, the pathology statistics and the uncertainty-quality metrics on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spinesegdiff.evaluation.statistics import benjamini_hochberg, welch_t_test
from spinesegdiff.evaluation.surface_metrics import assd, distances_per_class, hd95
from spinesegdiff.evaluation.uncertainty_metrics import (
    auroc,
    average_precision,
    brier_score,
    error_detection_scores,
    expected_calibration_error,
    uncertainty_error_overlap,
)


def _square(top: int, left: int, size: int = 10, shape=(64, 64)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_surface_distances_on_known_shapes() -> None:
    a = _square(10, 10)
    assert hd95(a, a) == 0.0 and assd(a, a) == 0.0
    shifted = _square(10, 13)  # 3 pixels to the right
    assert hd95(a, shifted) == pytest.approx(3.0)
    assert 0 < assd(a, shifted) < 3.0  # top and bottom edges overlap partly
    point, other = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    point[2, 2], other[7, 2] = True, True
    assert hd95(point, other) == pytest.approx(5.0) and assd(point, other) == pytest.approx(5.0)
    assert hd95(point, other, spacing=(2.0, 1.0)) == pytest.approx(10.0)  # rows are 2 mm apart
    empty = np.zeros((20, 20), bool)
    assert hd95(empty, empty) == 0.0 and assd(empty, empty) == 0.0
    assert math.isinf(hd95(point, empty)) and math.isinf(assd(empty, point))
    labels = np.zeros((64, 64), int)
    labels[a] = 2
    hd, sd = distances_per_class(labels, labels)
    assert hd[1] == 0.0 and hd[0] == 0.0 and sd.shape == (3,)
    with pytest.raises(ValueError, match="shapes differ"):
        hd95(point, np.zeros((3, 3), bool))


def test_benjamini_hochberg_against_a_hand_computed_example() -> None:
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 -> 4p/rank 0.04, 0.06, 0.0533, 0.2 -> running minimum from the top
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.2])
    with_nan = benjamini_hochberg([0.01, float("nan"), 0.02])
    np.testing.assert_allclose(with_nan[[0, 2]], [0.02, 0.02])  # m = 2: the NaN does not count
    assert np.isnan(with_nan[1])
    assert benjamini_hochberg([0.5])[0] == 0.5
    from scipy import stats

    p = np.random.default_rng(0).random(12) ** 2
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p, method="bh"))
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
        benjamini_hochberg([1.5])


def test_welch_t_test_matches_its_formula() -> None:
    a, b = np.array([0.9, 0.92, 0.88, 0.91]), np.array([0.8, 0.85, 0.83])
    result = welch_t_test(a, b)
    va, vb = a.var(ddof=1) / 4, b.var(ddof=1) / 3
    assert result["t"] == pytest.approx((a.mean() - b.mean()) / math.sqrt(va + vb))
    assert result["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 2))
    assert 0 < result["p"] < 0.05 and result["n_present"] == 4
    assert math.isnan(welch_t_test([0.9], b)["p"]) and math.isnan(welch_t_test([1, 1], [1, 1])["p"])


def test_auroc_and_average_precision_on_constructed_cases() -> None:
    positives = np.array([1, 1, 0, 0], bool)
    assert auroc(np.array([0.9, 0.8, 0.2, 0.1]), positives) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), positives) == 0.0
    assert auroc(np.full(4, 0.5), positives) == 0.5
    assert math.isnan(auroc(np.ones(3), np.ones(3, bool)))
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool)) == pytest.approx(5 / 6)
    assert average_precision(np.array([0.9, 0.8, 0.2, 0.1]), positives) == 1.0
    assert average_precision(np.full(4, 0.5), positives) == pytest.approx(0.5)  # all tied: the base rate


def test_error_detection_ueo_calibration_and_brier() -> None:
    truth = np.zeros((32, 32), int)
    truth[8:24, 8:24] = 2
    prediction = truth.copy()
    prediction[8:10, 8:24] = 0  # a wrong strip
    errors = prediction != truth
    perfect_map = errors.astype(float)
    scores = error_detection_scores(perfect_map, prediction, truth)
    assert scores["auroc"] == 1.0 and scores["aupr"] == 1.0 and 0 < scores["error_rate"] < 1
    assert uncertainty_error_overlap(perfect_map, prediction, truth) == 1.0
    assert uncertainty_error_overlap(1 - perfect_map, prediction, truth) < 0.5
    onehot = np.stack([truth == k for k in range(4)]).astype(float)
    assert brier_score(onehot, truth) == 0.0 and expected_calibration_error(onehot, truth) == 0.0
    assert brier_score(np.full((4, 32, 32), 0.25), truth) == pytest.approx(0.75)
    # confidence 1.0 everywhere but right only on half the pixels: ECE 0.5
    half = np.zeros((4, 2, 2))
    half[0] = 1.0
    assert expected_calibration_error(half, np.array([[0, 1], [0, 1]])) == pytest.approx(0.5)
    # confidence 0.8 and right on 80 % of the pixels: calibrated
    probs = np.zeros((4, 1, 10))
    probs[0], probs[1] = 0.8, 0.2
    labels = np.array([[0] * 8 + [1] * 2])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_pathology_tests_need_three_patients_per_group_and_average_per_patient() -> None:
    from spinesegdiff.evaluation.pathology import pathology_tests

    dice = {1: 0.95, 2: 0.94, 3: 0.93, 4: 0.96, 5: 0.80, 6: 0.82, 7: 0.81, 8: 0.79}
    # patient 1 has two cases (T1 and T2): they count once, as their mean (0.95)
    rows = [{"patient": p, "dice_SC": v, "dice_VB": v, "dice_IVD": v} for p, v in dice.items()]
    rows.append({"patient": 1, "dice_SC": 0.95, "dice_VB": 0.95, "dice_IVD": 0.95})
    flags = {str(p): {"rare": p in (5, 6), "common": p >= 5} for p in dice}
    tests = {(t["pathology"], t["structure"]): t for t in pathology_tests(rows, flags)}
    rare, common = tests["rare", "SC"], tests["common", "SC"]
    assert (rare["n_present"], rare["n_absent"]) == (2, 6) and np.isnan(rare["p"]) and not rare["significant"]
    assert (common["n_present"], common["n_absent"]) == (4, 4)
    assert common["p"] < 0.001 and common["significant"] and common["mean_present"] < common["mean_absent"]
    # the family holds the three "common" tests only: BH over three equal p-values leaves them unchanged
    assert common["q_bh"] == pytest.approx(common["p"])
