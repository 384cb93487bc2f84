"""The held-out scoring loop shared by ``test``, ``ablate``, ``evaluate`` and ``benchmark``.

:class:`HeldOutSlices` is a run's test fold (the central slices it never saw, from
:func:`spinesegdiff.data.folds.run_held_out_slices`); :func:`segment_timed` segments slices with any callable
(a :class:`~spinesegdiff.pipelines.segmenter.Segmenter`'s ``segment``, a presegmenter, the authors' procedure),
one slice per call or all in one call, and times it; :func:`load_run_segmenter` loads a run's checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from spinesegdiff.data.cache import SliceCache, SliceEntry

Output = TypeVar("Output")


@dataclass(frozen=True)
class HeldOutSlices:
    """A run's test fold: its number, the slice cache, and the indices of the held-out central slices."""

    fold: int
    cache: SliceCache
    indices: list[int]

    @classmethod
    def of_run(cls, train_config: Mapping[str, Any], run: str | Path) -> HeldOutSlices:
        """The held-out slices of the run saved in ``run`` with ``train_config``."""
        from spinesegdiff.data.folds import run_held_out_slices

        fold, cache, indices = run_held_out_slices(train_config, run)
        return cls(fold, cache, list(indices))

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def entries(self) -> list[SliceEntry]:
        return [self.cache.entries[i] for i in self.indices]

    @property
    def cases(self) -> list[str]:
        return [self.cache.entries[i].case for i in self.indices]

    def image(self, k: int) -> np.ndarray:
        """The ``k``-th held-out slice, ``uint8 (320, 320)``."""
        return np.asarray(self.cache.images[self.indices[k]])

    def truth(self, k: int) -> np.ndarray:
        """The ``k``-th held-out slice's cached labels, ``(320, 320)`` classes 0-3."""
        return np.asarray(self.cache.labels[self.indices[k]])

    def images(self) -> np.ndarray:
        """All held-out slices, ``uint8 (N, 320, 320)``."""
        return np.asarray(self.cache.images[np.asarray(self.indices)])


@dataclass(frozen=True)
class TimedOutputs(Generic[Output]):
    """What :func:`segment_timed` returns: the outputs of the timed calls and their wall time.

    Attributes:
        outputs: per slice (one call per slice), or one output for all slices (``per_slice=False``).
        seconds: wall time of the timed calls together (the best of ``repeats``).
        num_slices: slices segmented per repeat.
    """

    outputs: list[Output]
    seconds: float
    num_slices: int

    @property
    def seconds_per_slice(self) -> float:
        return self.seconds / max(1, self.num_slices)


def segment_timed(segment: Callable[[np.ndarray], Output], images: np.ndarray, *, per_slice: bool = True,
                  warm_up: bool = False, repeats: int = 1, desc: str = "", quiet: bool = True
                  ) -> TimedOutputs[Output]:
    """Segment ``(N, H, W)`` slices with ``segment`` and time it.

    Args:
        segment: ``(n, H, W) uint8 -> output``; with ``per_slice`` it is called once per slice (``n = 1``), else
            once with all slices.
        images: the slices (an array or a sequence of ``(H, W)`` arrays when ``per_slice``).
        warm_up: first call ``segment`` once on the first slice, untimed (one-time runtime set-up, memory
            allocation, graph compilation are not per-slice time).
        repeats: time the whole pass this often and keep the fastest (outputs are those of the last pass).
        desc: progress-bar label (no bar when ``quiet``).
    """
    from tqdm.auto import tqdm

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    count = len(images)
    if warm_up and count:
        segment(np.asarray(images[0])[None])
    best, outputs = float("inf"), []
    for _ in range(repeats):
        outputs, seconds = [], 0.0
        if per_slice:
            for k in tqdm(range(count), desc=desc, unit="slice", disable=quiet):
                image = np.asarray(images[k])[None]
                started = time.perf_counter()
                outputs.append(segment(image))
                seconds += time.perf_counter() - started
        else:
            batch = np.asarray(images)
            started = time.perf_counter()
            outputs.append(segment(batch))
            seconds = time.perf_counter() - started
        best = min(best, seconds)
    return TimedOutputs(outputs, best, count)


class _LazySlices:
    """The held-out slices as a sequence that reads one slice at a time from the (memory-mapped) cache."""

    def __init__(self, held_out: HeldOutSlices) -> None:
        self.held_out = held_out

    def __len__(self) -> int:
        return len(self.held_out)

    def __getitem__(self, k: int) -> np.ndarray:
        return self.held_out.image(k)


def segment_held_out(segment: Callable[[np.ndarray], Output], held_out: HeldOutSlices, *, desc: str = "",
                     quiet: bool = True) -> TimedOutputs[Output]:
    """:func:`segment_timed` over a run's held-out slices, one slice per call (outputs in ``held_out`` order)."""
    return segment_timed(segment, _LazySlices(held_out), desc=desc, quiet=quiet)  # type: ignore[arg-type]


def load_run_segmenter(run_dir: str | Path, *, checkpoint: str = "best.pt", device: str = "auto", settings=None,
                       quiet: bool = False, presegmenter=None):
    """``(segmenter, model file)`` of a run folder's ``checkpoint`` (the run's own choice when that is absent)."""
    from spinesegdiff.models.checkpoint import resolve_model_file
    from spinesegdiff.pipelines.segmenter import Segmenter

    run_dir = Path(run_dir)
    model_file = resolve_model_file(run_dir / checkpoint if (run_dir / checkpoint).exists() else run_dir)
    segmenter = Segmenter.from_checkpoint(model_file, device=device, settings=settings, quiet=quiet,
                                          presegmenter=presegmenter)
    return segmenter, model_file
