"""Training batches: cached slices, thick slices simulated from their neighbours, then the augmentation.

A thick slice (issue 13: users' 2D turbo spin-echo scans have 3-4 mm slices, our training slices are thin) is
the average of a cached slice and its neighbours in the same series, so it is made where the batch is read from
the cache: :class:`SliceNeighbours` finds each slice's neighbours once per run, :func:`training_batch` reads them
and hands them to :func:`spinesegdiff.data.augment.thick_slice` before the spatial and intensity augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from spinesegdiff.data.augment import AugmentConfig, augment_batch, thick_slice
from spinesegdiff.data.cache import SliceCache
from spinesegdiff.training.validation import batch_tensors


@dataclass(frozen=True)
class SliceNeighbours:
    """Each cached slice's neighbours in its own series (case, hence patient), by sagittal slice index.

    Attributes:
        table: ``(N, 2 * radius + 1)`` int64: ``table[i, radius + k]`` is the array index of the slice ``k``
            slice indices from slice ``i`` in ``i``'s case (``table[i, radius] == i``), ``-1`` where the cache
            lacks it.
        reach: ``(N,)`` int64 in ``0..radius``: how many neighbours slice ``i`` has in the cache on *both*
            sides without a gap (0: none on one side at least, e.g. a cache of central slices only).
        spacing_mm: ``(N,)`` float32: the distance between adjacent sagittal slices of ``i``'s scan.
    """

    table: np.ndarray
    reach: np.ndarray
    spacing_mm: np.ndarray

    @property
    def radius(self) -> int:
        return self.table.shape[1] // 2

    @classmethod
    def from_cache(cls, cache: SliceCache, max_thickness_mm: float) -> SliceNeighbours:
        """The neighbours a slab up to ``max_thickness_mm`` thick, centred on any cached slice, can reach."""
        spacing = np.asarray([cache.grids[e.case].ras_spacing[0] for e in cache.entries], dtype=np.float32)
        # slice k (cell [(k - 1/2) s, (k + 1/2) s]) overlaps the slab [-t/2, t/2] for k < t / (2 s) + 1/2
        radius = max([math.ceil(max_thickness_mm / (2 * float(s)) - 0.5) for s in set(spacing.tolist())] + [0])
        where = {(e.case, e.slice_index): i for i, e in enumerate(cache.entries)}
        table = np.asarray([[where.get((e.case, e.slice_index + k), -1) for k in range(-radius, radius + 1)]
                            for e in cache.entries], dtype=np.int64).reshape(len(cache.entries), 2 * radius + 1)
        present = table >= 0
        reach = np.zeros(len(cache.entries), dtype=np.int64)
        for k in range(1, radius + 1):
            reach += present[:, radius - k] & present[:, radius + k] & (reach == k - 1)
        return cls(table=table, reach=reach, spacing_mm=spacing)


def thick_slice_batch(cache: SliceCache, neighbours: SliceNeighbours, indices: np.ndarray | list[int],
                      device: torch.device, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """The images ``(B, 1, H, W)`` float32 in [0, 1] of cached slices on ``device``, each a simulated thick
    slice with chance ``config.p_thick_slice`` (:func:`spinesegdiff.data.augment.thick_slice`), else exactly
    the slice (as :func:`~spinesegdiff.training.validation.batch_tensors` reads it)."""
    order = np.asarray(indices)
    rows = neighbours.table[order]
    rows = np.where(rows >= 0, rows, order[:, None])  # missing neighbours: the slice itself (they weigh 0)
    stack = torch.from_numpy(np.asarray(cache.images[rows.ravel()], dtype=np.float32) / 255.0)
    stack = stack.view(*rows.shape, *stack.shape[1:]).to(device)
    return thick_slice(stack, torch.from_numpy(neighbours.spacing_mm[order]).to(device),
                       torch.from_numpy(neighbours.reach[order]).to(device), config, generator)


def training_batch(cache: SliceCache, indices: np.ndarray | list[int], device: torch.device,
                   config: AugmentConfig, generator: torch.Generator,
                   neighbours: SliceNeighbours | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch of cached slices: image ``(B, 1, H, W)`` float32 in [0, 1], labels ``(B, H, W)`` int64.

    Thick slices are simulated first (when ``config`` asks for them and ``neighbours`` is given; the labels stay
    the centre slices'), then :func:`~spinesegdiff.data.augment.augment_batch` augments the batch. Every draw is
    from ``generator`` (on ``device``), so its state decides the batch; without thick slices nothing is drawn for
    them and the batch is that of the plain augmentation.
    """
    image, labels = batch_tensors(cache, indices, device)
    if neighbours is not None and config.enabled and config.p_thick_slice > 0:
        image = thick_slice_batch(cache, neighbours, indices, device, config, generator)
    return augment_batch(image, labels, config, generator)


def run_neighbours(cache: SliceCache, config: AugmentConfig) -> SliceNeighbours | None:
    """The neighbour table a run needs: ``None`` unless its augmentation simulates thick slices."""
    if not (config.enabled and config.p_thick_slice > 0):
        return None
    return SliceNeighbours.from_cache(cache, config.thick_slice_mm[1])
