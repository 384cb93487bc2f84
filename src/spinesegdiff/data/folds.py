"""Which cached slices a run trains, validates and is tested on: patient-level folds, read from its settings.

Training, evaluation, the ablation and the benchmarks all ask one question of a run: which slices did it
never see? :class:`FoldSettings` holds the settings that answer it (the split, the test fold, the patients
held out for validation or cross-fitting), :func:`fold_data` answers it for a cache, and
:func:`held_out_slices` for a saved run. Nothing here knows of networks or training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spinesegdiff.data.cache import SliceCache, build_cache, is_cache_folder, load_cache
from spinesegdiff.data.splits import (
    Split,
    apply_split,
    load_split,
    make_patient_folds,
    patient_of,
    validation_patients,
)
from spinesegdiff.errors import InputError


@dataclass(frozen=True, kw_only=True)
class FoldSettings:
    """How a run's patients are split.

    Attributes:
        fold: the test fold (0-based) of a ``num_folds`` patient split, or ``-1`` to train on every case.
        num_folds: folds of the split made with ``split_seed`` (unless ``split_file`` gives one).
        split_file: a ``splits_final.json`` (ours or the paper's) to take the folds from.
        split_seed: seed of the split made here.
        val_fraction: share of the training patients held out for validation (``0``: none).
        val_seed: seed of the validation choice (the run's seed).
        holdout_patients: patients also left out of training and validation (cross-fitted presegmenters).
        crossfit_part: ``"k/n"``: also hold out part ``k`` of ``n`` seeded parts of the training patients.
    """

    fold: int = 0
    num_folds: int = 5
    split_file: str | None = None
    split_seed: int = 12345
    val_fraction: float = 0.15
    val_seed: int = 0
    holdout_patients: tuple[str, ...] = ()
    crossfit_part: str | None = None

    def __post_init__(self) -> None:
        if self.num_folds < 2:
            raise ValueError(f"num_folds must be at least 2, got {self.num_folds}")
        if self.fold < -1 or self.fold >= self.num_folds:
            raise ValueError(f"fold must be -1 (all data) or in 0..{self.num_folds - 1}, got {self.fold}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        object.__setattr__(self, "holdout_patients", tuple(str(p) for p in self.holdout_patients))
        if self.crossfit_part is not None:
            part, _, parts = str(self.crossfit_part).partition("/")
            if not (part.isdigit() and parts.isdigit() and 1 <= int(part) <= int(parts) and int(parts) >= 2):
                raise ValueError(f"crossfit_part must read 'k/n' with 1 <= k <= n, n >= 2; got {self.crossfit_part!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FoldSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown fold settings: {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FoldData:
    """Cache indices of a run's training, validation and test slices (validation and test: central slices of
    series that are not oblique), and the split they come from."""

    cache: SliceCache
    train: list[int]
    validation: list[int]
    test: list[int]
    split: Split


def crossfit_parts(patients: Sequence[str], parts: int = 2, *, seed: int = 0) -> list[list[str]]:
    """Split patients into ``parts`` disjoint, seeded groups of near-equal size (sorted within a group)."""
    unique = sorted(set(patients), key=lambda p: (len(p), p))
    if parts < 2 or parts > len(unique):
        raise ValueError(f"parts must lie in 2..{len(unique)}, got {parts}")
    order = np.random.default_rng(seed).permutation(len(unique))
    return [sorted((unique[i] for i in order[k::parts]), key=lambda p: (len(p), p)) for k in range(parts)]


def open_data(data: str | Path, out: str | Path, *, quiet: bool = False) -> SliceCache:
    """A cache folder is opened; a SPIDER folder is preprocessed into ``<out>/cache`` first (once)."""
    data = Path(data)
    if is_cache_folder(data):
        return load_cache(data)
    cache_dir = Path(out) / "cache"
    if is_cache_folder(cache_dir):
        return load_cache(cache_dir)
    return build_cache(data, cache_dir, progress=not quiet)


def _training_cases(settings: FoldSettings, split: Split, cases: list[str]) -> tuple[list[str], list[str]]:
    """``(training cases after every hold-out, test cases)`` of the run's fold."""
    if settings.fold == -1:
        train_cases, test_cases = cases, []
    else:
        train_cases, test_cases = split[settings.fold]["train"], split[settings.fold]["test"]
    excluded = set(settings.holdout_patients)
    if settings.crossfit_part is not None:
        part, parts = (int(v) for v in settings.crossfit_part.split("/"))
        patients = [patient_of(c) for c in train_cases]
        excluded |= set(crossfit_parts(patients, parts, seed=settings.split_seed)[part - 1])
    return [c for c in train_cases if patient_of(c) not in excluded], list(test_cases)


def fold_data(settings: FoldSettings, cache: SliceCache) -> FoldData:
    """Split the cache by patient into the run's training, validation and test slices."""
    cases = cache.case_names
    if settings.split_file:
        split = apply_split(load_split(settings.split_file), cases, source=settings.split_file)
    else:
        split = make_patient_folds(cases, num_folds=settings.num_folds, seed=settings.split_seed)
    train_cases, test_cases = _training_cases(settings, split, cases)
    held_out = (validation_patients(train_cases, fraction=settings.val_fraction, seed=settings.val_seed)
                if settings.val_fraction > 0 else set())
    fit_cases = [c for c in train_cases if patient_of(c) not in held_out]
    val_cases = [c for c in train_cases if patient_of(c) in held_out]
    return FoldData(
        cache=cache,
        train=cache.indices(cases=fit_cases),
        validation=cache.indices(cases=val_cases, central_only=True, exclude_oblique=True),
        test=cache.indices(cases=test_cases, central_only=True, exclude_oblique=True),
        split=split,
    )


def held_out_slices(data: str | Path, out: str | Path, settings: FoldSettings, *, run: str | Path
                    ) -> tuple[SliceCache, list[int]]:
    """A run's cache and the indices of its held-out test slices (central, not oblique).

    Args:
        data: the run's data folder (a cache, or a SPIDER folder cached in ``<out>/cache``).
        out: the run folder it was trained into.
        settings: its fold settings.
        run: the run, for the error message.

    Raises:
        InputError: the run has no test fold (trained with ``--fold all``).
    """
    cache = open_data(data, out, quiet=True)
    test = fold_data(settings, cache).test
    if not test:
        raise InputError(run, "the run has no test fold (trained with --fold all)")
    return cache, test


_LEGACY_FOLD_KEYS = ("fold", "num_folds", "split_file", "split_seed", "val_fraction", "holdout_patients",
                     "crossfit_part")


def run_fold_settings(train_config: Mapping[str, Any]) -> tuple[str, str, FoldSettings]:
    """``(data, out, fold settings)`` of a run, from the training settings saved in its checkpoint.

    Reads the sectioned form (``{"data": ..., "out": ..., "folds": {...}, ...}``) and the flat form of
    checkpoints written before the sections (the shipped models'), whose validation seed was the run's
    ``seed``.

    Raises:
        ValueError: the settings name no data folder or hold unknown fold settings.
    """
    if "data" not in train_config or "out" not in train_config:
        raise ValueError("the training settings name no data and run folder")
    if isinstance(train_config.get("folds"), Mapping):
        settings = FoldSettings.from_dict(train_config["folds"])
    else:
        legacy = {key: train_config[key] for key in _LEGACY_FOLD_KEYS if key in train_config}
        settings = FoldSettings.from_dict({**legacy, "val_seed": train_config.get("seed", 0)})
    return str(train_config["data"]), str(train_config["out"]), settings


def run_held_out_slices(train_config: Mapping[str, Any], run: str | Path) -> tuple[int, SliceCache, list[int]]:
    """``(test fold, cache, held-out slice indices)`` of a saved run (see :func:`held_out_slices`).

    Raises:
        InputError: the settings are unreadable, or the run has no test fold.
    """
    try:
        data, out, settings = run_fold_settings(train_config)
    except (TypeError, ValueError) as err:
        raise InputError(run, f"its training settings cannot be read ({err})") from err
    cache, test = held_out_slices(data, out, settings, run=run)
    return settings.fold, cache, test
