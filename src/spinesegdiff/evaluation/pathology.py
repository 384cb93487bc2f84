"""Does a pathology lower the Dice? Welch's t-test per structure and pathology, Benjamini-Hochberg corrected.

One value per patient: a patient's cases (T1 and T2 series of one spine are not independent) are averaged
first. Flags per patient follow :func:`spinesegdiff.data.spider.pathology_flags` (present when graded at any disc
level; degeneration: Pfirrmann grade >= 4). All tests of a system (pathologies x structures) form one family
for the false discovery rate. A test runs only when both groups hold at least :data:`MIN_GROUP_SIZE` patients:
with two, Welch's test leans on a variance estimated from two values and calls two patients who happen to
score alike "significant" (it did so on the 33 shared patients, 2 without disc narrowing); smaller groups are
reported with their means and left out of the family.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS
from spinesegdiff.evaluation.statistics import benjamini_hochberg, welch_t_test

MIN_GROUP_SIZE = 3


def patient_means(rows: list[dict], key: str) -> dict[str, float]:
    """``{patient: mean of key over the patient's cases}``."""
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        values[str(row["patient"])].append(float(row[key]))
    return {patient: float(np.mean(v)) for patient, v in values.items()}


def pathology_tests(rows: list[dict], flags: dict[str, dict[str, bool]], *, alpha: float = 0.05) -> list[dict]:
    """One row per (pathology, structure): group sizes and means, Welch t and p, BH-adjusted q, significance.

    Args:
        rows: per-case scores of one system (``patient`` and ``dice_<S>`` keys).
        flags: ``{patient: {pathology: present}}``; patients without flags are left out.
    """
    if not flags:
        return []
    pathologies = list(next(iter(flags.values())))
    tests = []
    for structure in STRUCTURE_ABBREVIATIONS:
        per_patient = patient_means(rows, f"dice_{structure}")
        for pathology in pathologies:
            present = [v for p, v in per_patient.items() if p in flags and flags[p][pathology]]
            absent = [v for p, v in per_patient.items() if p in flags and not flags[p][pathology]]
            result = welch_t_test(present, absent)
            if min(len(present), len(absent)) < MIN_GROUP_SIZE:
                result.update(t=float("nan"), p=float("nan"), df=float("nan"))
            tests.append({"pathology": pathology, "structure": structure, **result})
    q_values = benjamini_hochberg([t["p"] for t in tests])
    for test, q in zip(tests, q_values, strict=True):
        test["q_bh"] = float(q)
        test["significant"] = bool(q <= alpha) if not np.isnan(q) else False
    return tests
