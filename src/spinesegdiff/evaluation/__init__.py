"""Reproducing the paper's evaluation: systems' predictions, per-case scores, statistics, figures, report."""
