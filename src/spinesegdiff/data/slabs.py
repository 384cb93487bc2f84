"""Sagittal slabs: each scan's cached slices stacked in order, for the 3D systems (nnU-Net 3D, Diff-UNet 3D).

A cache built with ``spinesegdiff preprocess --all-slices`` holds every slice of the SPIDER
T2 SPACE series around the midline, 9 at 1 mm for the shared data. A :class:`Slabs` stacks them per scan,
left to right as the cache numbers them, and remembers where the central slice sits, which is the slice a 3D
system is scored on (the same slice the 2D systems segment). This is a slab, not the whole volume the paper's
3D rows saw: the docs say so wherever a 3D figure is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spinesegdiff.data.cache import SliceCache
from spinesegdiff.errors import SpineSegDiffError


@dataclass(frozen=True)
class Slabs:
    """Equal-depth sagittal slabs, one per scan.

    Attributes:
        images: ``(N, D, H, W)`` ``uint8`` intensities 0..255 (the cache's scaling), ``D`` slices per scan in
            the cache's slice order.
        labels: ``(N, D, H, W)`` ``uint8`` classes 0..3.
        cases: ``N`` case identifiers (``<patient>_t2_SPACE``), in the order of ``images``.
        patients: ``N`` patient identifiers.
        central: ``(N,)`` int, the index along ``D`` of each scan's central slice.
    """

    images: np.ndarray
    labels: np.ndarray
    cases: list[str]
    patients: list[str]
    central: np.ndarray

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def depth(self) -> int:
        return int(self.images.shape[1])

    def central_slices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of each scan's central slice, ``(N, H, W)`` each."""
        rows = np.arange(len(self))
        return self.images[rows, self.central], self.labels[rows, self.central]

    def subset(self, cases: Sequence[str]) -> Slabs:
        """The slabs of ``cases``, in that order (every case must be present)."""
        position = {case: k for k, case in enumerate(self.cases)}
        missing = [case for case in cases if case not in position]
        if missing:
            raise SpineSegDiffError(f"no slab for case(s) {', '.join(missing[:5])}")
        rows = [position[case] for case in cases]
        return Slabs(images=self.images[rows], labels=self.labels[rows], cases=list(cases),
                     patients=[self.patients[k] for k in rows], central=self.central[rows])


def slabs_from_cache(cache: SliceCache, *, cases: Sequence[str] | None = None) -> Slabs:
    """Stack a cache's slices into one slab per scan.

    Args:
        cache: a slice cache holding several slices per scan (``preprocess --all-slices``).
        cases: the scans to take, in this order (default: every scan, sorted by name).

    Raises:
        SpineSegDiffError: a scan without a central slice, scans of unequal slice counts (a slab batch needs
            one depth), a scan with a gap in its slice indices, or a cache of central slices only.
    """
    chosen = list(cases) if cases is not None else cache.case_names
    by_case: dict[str, list[int]] = {case: [] for case in chosen}
    for index, entry in enumerate(cache.entries):
        if entry.case in by_case:
            by_case[entry.case].append(index)
    depths = set()
    image_stack, label_stack, patients, central = [], [], [], []
    for case in chosen:
        rows = sorted(by_case[case], key=lambda i: cache.entries[i].slice_index)
        if not rows:
            raise SpineSegDiffError(f"{cache.root}: no slices of case {case}")
        numbers = [cache.entries[i].slice_index for i in rows]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            raise SpineSegDiffError(f"{cache.root}: case {case} has a gap in its slices {numbers}")
        centres = [k for k, i in enumerate(rows) if cache.entries[i].central]
        if len(centres) != 1:
            raise SpineSegDiffError(f"{cache.root}: case {case} has {len(centres)} central slices, expected 1")
        depths.add(len(rows))
        image_stack.append(cache.images[rows])
        label_stack.append(cache.labels[rows])
        patients.append(cache.entries[rows[0]].patient)
        central.append(centres[0])
    if len(depths) > 1:
        raise SpineSegDiffError(f"{cache.root}: scans have different slice counts {sorted(depths)}; "
                                "a slab batch needs one depth")
    if depths == {1}:
        raise SpineSegDiffError(f"{cache.root}: holds one slice per scan; build it with spinesegdiff preprocess "
                                "--all-slices")
    return Slabs(images=np.stack(image_stack), labels=np.stack(label_stack), cases=chosen, patients=patients,
                 central=np.asarray(central, dtype=np.int64))
