"""Boundary distances between masks, in millimetres: 95th-percentile Hausdorff (HD95) and average symmetric
surface distance (ASSD).

A mask's surface is its set of foreground pixels with a background 4-neighbour (2D) or 6-neighbour (3D);
distances run from each surface pixel of one mask to the nearest surface pixel of the other, through
Euclidean distance transforms that honour the pixel spacing. Both empty: 0 (nothing to find, nothing found).
One empty: ``inf`` (no boundary to compare); tables report such cases as missing and count them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean surface of a boolean mask (foreground pixels touching the background face-wise)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from every surface pixel of ``a`` to the surface of ``b``, and from ``b`` to ``a``."""
    surface_a, surface_b = surface(a), surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    return to_b[surface_a], to_a[surface_b]


def _all_distances(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None
                   ) -> np.ndarray | float:
    """Both directions' surface distances concatenated, or 0.0 (both empty) / inf (one empty)."""
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"shapes differ: {prediction.shape} vs {truth.shape}")
    if not prediction.any() and not truth.any():
        return 0.0
    if not prediction.any() or not truth.any():
        return float("inf")
    return np.concatenate(surface_distances(prediction, truth, spacing or (1.0,) * prediction.ndim))


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile of the symmetric surface distances (mm); 0 if both masks are empty, inf if one is."""
    distances = _all_distances(prediction, truth, spacing)
    return distances if isinstance(distances, float) else float(np.percentile(distances, 95))


def assd(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Mean of all surface distances in both directions (mm); 0 if both masks are empty, inf if one is."""
    distances = _all_distances(prediction, truth, spacing)
    return distances if isinstance(distances, float) else float(distances.mean())


def distances_per_class(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None,
                        classes: Sequence[int] = (1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """HD95 and ASSD (mm) per class of two label maps -> two ``(len(classes),)`` arrays."""
    return (np.asarray([hd95(prediction == c, truth == c, spacing) for c in classes]),
            np.asarray([assd(prediction == c, truth == c, spacing) for c in classes]))
