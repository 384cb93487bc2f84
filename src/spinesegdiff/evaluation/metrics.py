"""Overlap metrics on label maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STRUCTURE_CLASSES: tuple[int, ...] = (1, 2, 3)


def dice_score(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape; 1.0 when both are empty (nothing to find, nothing found)."""
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"shapes differ: {prediction.shape} vs {truth.shape}")
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(prediction, truth).sum()) / total


def dice_per_class(prediction: np.ndarray, truth: np.ndarray,
                   classes: Sequence[int] = STRUCTURE_CLASSES) -> np.ndarray:
    """Dice per class of two integer label maps (any shape) -> ``(len(classes),)`` float64 in [0, 1]."""
    return np.asarray([dice_score(prediction == c, truth == c) for c in classes], dtype=np.float64)
