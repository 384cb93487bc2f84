"""Training batches of sagittal slabs (Diff-UNet 3D): the fold's scans stacked, augmented slab by slab.

A slab run trains and validates on the patients of a 2D run with the same fold settings:
:func:`fold_slabs` takes the cases of :class:`~spinesegdiff.data.folds.FoldData`'s training and validation
slices and stacks each case's cached slices into one slab (:func:`~spinesegdiff.data.slabs.slabs_from_cache`).

Augmentation is the 2D one, :func:`~spinesegdiff.data.augment.augment_batch`, applied identically to every
slice of a slab (:func:`augment_slabs`): its random draws are per batch item and broadcast over channels, so
the ``D`` slices ride as the channels of one image, and their label maps are packed into one map of base-4
codes (:func:`pack_slab_labels`) that the nearest-neighbour warp moves with the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spinesegdiff.data.augment import AugmentConfig, augment_batch
from spinesegdiff.data.cache import SliceCache
from spinesegdiff.data.folds import FoldData
from spinesegdiff.data.slabs import Slabs, slabs_from_cache

NUM_CLASSES = 4
"""Label classes 0..3 (background, SC, VB, IVD): the base of the packed label codes."""
MAX_PACKED_DEPTH = 12
"""Slices whose labels fit in one packed map: codes below ``4 ** 12 = 2 ** 24`` are exact in float32, the
dtype the augmentation warps labels in."""


@dataclass(frozen=True)
class SlabData:
    """A slab run's training and validation slabs (the validation slabs are scored on their central slice)."""

    train: Slabs
    validation: Slabs


def fold_slabs(cache: SliceCache, data: FoldData) -> SlabData:
    """The slabs of the cases whose slices ``data`` trains and validates on (sorted by case name).

    Raises:
        SpineSegDiffError: the cache holds one slice per scan, or scans of unequal slice counts.
    """

    def cases(indices: list[int]) -> list[str]:
        return sorted({cache.entries[i].case for i in indices})

    return SlabData(train=slabs_from_cache(cache, cases=cases(data.train)),
                    validation=slabs_from_cache(cache, cases=cases(data.validation)))


def check_slab_augmentation(config: AugmentConfig) -> None:
    """``ValueError`` for the 2D-only augmentations: simulated thick slices, label-driven and T1 contrast."""
    if config.enabled and (config.p_thick_slice > 0 or config.p_label_contrast > 0 or config.p_t1_contrast > 0):
        raise ValueError("slab training cannot simulate thick slices, label contrast or T1 contrast: set "
                         "p_thick_slice, p_label_contrast and p_t1_contrast to 0")


def pack_slab_labels(labels: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W)`` classes 0..3 -> ``(B, H, W)`` int64 codes ``sum_d labels[:, d] * 4 ** d``.

    Raises:
        ValueError: more than :data:`MAX_PACKED_DEPTH` slices.
    """
    depth = labels.shape[1]
    if depth > MAX_PACKED_DEPTH:
        raise ValueError(f"slab labels pack at most {MAX_PACKED_DEPTH} slices, got {depth}")
    weights = NUM_CLASSES ** torch.arange(depth, device=labels.device, dtype=torch.int64)
    return (labels.long() * weights[None, :, None, None]).sum(dim=1)


def unpack_slab_labels(codes: torch.Tensor, depth: int) -> torch.Tensor:
    """Inverse of :func:`pack_slab_labels`: ``(B, H, W)`` codes -> ``(B, depth, H, W)`` int64 classes."""
    weights = NUM_CLASSES ** torch.arange(depth, device=codes.device, dtype=torch.int64)
    return (codes[:, None] // weights[None, :, None, None]) % NUM_CLASSES


def augment_slabs(images: torch.Tensor, labels: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment slabs, every slice of a slab with the same transform and intensity changes.

    Args:
        images: ``(B, D, H, W)`` float in ``[0, 1]``.
        labels: ``(B, D, H, W)`` integer classes 0..3.
        config: the 2D augmentation settings (thick slices and label contrast off, see
            :func:`check_slab_augmentation`).
        generator: a generator on the tensors' device; the same state gives the same batch.

    Returns:
        ``(images in [0, 1], labels int64)`` of the input shapes.
    """
    check_slab_augmentation(config)
    augmented, codes = augment_batch(images, pack_slab_labels(labels), config, generator)
    return augmented, unpack_slab_labels(codes, labels.shape[1])


def slab_tensors(slabs: Slabs, indices: np.ndarray | list[int], device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Slabs -> images ``(B, D, H, W)`` float32 in ``[0, 1]`` and labels ``(B, D, H, W)`` int64 on ``device``."""
    order = np.asarray(indices)
    images = torch.from_numpy(np.asarray(slabs.images[order], dtype=np.float32) / 255.0)
    labels = torch.from_numpy(np.asarray(slabs.labels[order], dtype=np.int64))
    return images.to(device), labels.to(device)


def slab_training_batch(slabs: Slabs, indices: np.ndarray | list[int], device: torch.device,
                        config: AugmentConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch of slabs: image ``(B, 1, D, H, W)`` float32 in ``[0, 1]``, labels ``(B, D, H, W)`` int64,
    augmented by :func:`augment_slabs` (every draw from ``generator``)."""
    images, labels = slab_tensors(slabs, indices, device)
    images, labels = augment_slabs(images, labels, config, generator)
    return images[:, None], labels
