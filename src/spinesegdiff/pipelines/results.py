"""What a segmenter returns for a stack of model-grid slices: :class:`SliceSegmentation`, NumPy arrays only.

One result type for every sampler: the PyTorch :class:`~spinesegdiff.pipelines.segmenter.Segmenter`, the
torch-free :class:`~spinesegdiff.pipelines.backends.compiled_segmenter.CompiledSegmenter` and its NumPy sampler
(:mod:`~spinesegdiff.pipelines.backends.numpy_sampler`) all build it directly. Importing this module imports
NumPy and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class SliceSegmentation:
    """Sampler output for ``N`` slices on the model grid, as NumPy arrays.

    Attributes:
        probabilities: ``(N, 3, 320, 320)`` float32 fused SC/VB/IVD probabilities in [0, 1].
        class_probabilities: ``(N, 4, 320, 320)`` float32, background first, summing to 1.
        labels: ``(N, 320, 320)`` uint8 in {0, 1, 2, 3}.
        uncertainty: ``(N, 320, 320)`` float32 entropy heatmap in [0, 1].
        structure_uncertainty: ``(N, 3, 320, 320)`` float32 per-structure entropy in [0, 1].
        variance: ``(N, 3, 320, 320)`` float32 sample variance of the last step (IISDM-style uncertainty).
        network_calls: denoiser passes made, summed over batches.
    """

    probabilities: np.ndarray
    class_probabilities: np.ndarray
    labels: np.ndarray
    uncertainty: np.ndarray
    structure_uncertainty: np.ndarray
    variance: np.ndarray
    network_calls: int


ARRAY_FIELDS = tuple(f.name for f in fields(SliceSegmentation) if f.name != "network_calls")
"""The per-slice array fields of :class:`SliceSegmentation`, in declaration order."""


def concatenate_segmentations(parts: Sequence[SliceSegmentation]) -> SliceSegmentation:
    """Batches of slices, in order, as one :class:`SliceSegmentation` (arrays joined along ``N``, network calls
    summed).

    Raises:
        ValueError: no parts.
    """
    if not parts:
        raise ValueError("concatenate_segmentations needs at least one part")
    arrays = {name: np.concatenate([getattr(part, name) for part in parts]) for name in ARRAY_FIELDS}
    return SliceSegmentation(**arrays, network_calls=sum(part.network_calls for part in parts))


def cleared_outside(segmentation: SliceSegmentation, inside: np.ndarray) -> SliceSegmentation:
    """``segmentation`` with every pixel outside ``inside`` (``(H, W)`` bool, such as the scan's field of view on
    the model grid) set to certain background: class probabilities ``(1, 0, 0, 0)``, labels, fused probabilities,
    uncertainties and variance 0. A copy; ``inside`` everywhere gives the same arrays."""
    outside = ~np.asarray(inside, dtype=bool)
    if not outside.any():
        return segmentation
    arrays = {name: getattr(segmentation, name).copy() for name in ARRAY_FIELDS}
    for array in arrays.values():
        array[..., outside] = 0
    arrays["class_probabilities"][:, 0][..., outside] = 1.0
    return SliceSegmentation(**arrays, network_calls=segmentation.network_calls)
