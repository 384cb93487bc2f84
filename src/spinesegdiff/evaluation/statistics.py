"""Group comparisons for the pathology analysis: Welch's t-test and Benjamini-Hochberg FDR control."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order.

    ``q_(i) = min_{j >= i} min(1, m p_(j) / j)`` over the ascending order ``p_(1) <= ... <= p_(m)``; a test
    is significant at false discovery rate ``alpha`` when ``q <= alpha``. NaN p-values (tests that could not
    run) stay NaN and do not count towards ``m``.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return adjusted
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return adjusted


def welch_t_test(present: Sequence[float], absent: Sequence[float]) -> dict[str, float]:
    """Welch's two-sided t-test of the means of two groups (unequal variances).

    Returns ``{"t", "p", "df", "mean_present", "mean_absent", "n_present", "n_absent"}``; ``t``, ``p`` and
    ``df`` are NaN when a group has fewer than 2 values or both have zero variance.
    """
    from scipy import stats

    a, b = np.asarray(present, dtype=float), np.asarray(absent, dtype=float)
    result = {"mean_present": float(a.mean()) if a.size else float("nan"),
              "mean_absent": float(b.mean()) if b.size else float("nan"),
              "n_present": int(a.size), "n_absent": int(b.size),
              "t": float("nan"), "p": float("nan"), "df": float("nan")}
    if a.size < 2 or b.size < 2:
        return result
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return result
    test = stats.ttest_ind(a, b, equal_var=False)
    result.update(t=float(test.statistic), p=float(test.pvalue),
                  df=float((va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))))
    return result
