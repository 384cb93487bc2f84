"""``spinesegdiff evaluate``: predict with every system on held-out folds, then build the report.

One fold (the runs' own) compares systems on the same held-out patients. Several folds (``folds``) make a
cross-validated evaluation: each system is run on each fold with that fold's model (``{fold}`` in its paths)
and the held-out predictions are pooled, so every patient of the split is scored once, by a model that never
saw it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.evaluation.systems import PredictionSet, SystemSpec, predict_system


def _reference_fold(specs: Sequence[SystemSpec]):
    """The cache, fold number and test indices of the first spinesegdiff run (every run must agree)."""
    from spinesegdiff.data.folds import run_held_out_slices
    from spinesegdiff.models.checkpoint import load_checkpoint, resolve_model_file

    runs = [s for s in specs if s.kind == "run"]
    if not runs:
        raise SpineSegDiffError("evaluate needs at least one spinesegdiff run to take the held-out fold from")
    reference = None
    for spec in runs:
        payload = load_checkpoint(resolve_model_file(spec.path), map_location="cpu")
        fold, cache, test = run_held_out_slices(payload["train_config"], spec.path)
        cases = [cache.entries[i].case for i in test]
        if reference is None:
            reference = (cache, fold, test, cases)
        elif cases != reference[3]:
            raise SpineSegDiffError(f"{spec.path}: its held-out cases differ from {runs[0].path}'s; compare runs of "
                                    "one split and fold")
    return reference


def _checked_fold(specs: Sequence[SystemSpec], expected_fold: int | None):
    """:func:`_reference_fold`, refusing runs whose test fold is not ``expected_fold``."""
    reference = _reference_fold(specs)
    if expected_fold is not None and reference[1] != expected_fold:
        run = next(s.path for s in specs if s.kind == "run")
        raise SpineSegDiffError(f"{run}: trained with test fold {reference[1]}, not {expected_fold}; name each "
                                "fold's run with {fold} in the system's path (NAME=runs/unet-fold{fold})")
    return reference


class FoldPredictions(NamedTuple):
    """One fold: its number, every system's predictions (in the order of the specs), and per case the image,
    the ground truth and the contrast (``slices["images" | "truth" | "contrast"][case]``)."""

    fold: int
    predictions: list[PredictionSet]
    slices: dict[str, dict]


def _predict_fold(specs: Sequence[SystemSpec], reference, folder: Path, *, settings, device: str, reuse: bool,
                  quiet: bool) -> FoldPredictions:
    """Every system's predictions on one fold (saved in ``folder``), with that fold's slices."""
    cache, fold, test, cases = reference
    images = np.asarray(cache.images[np.asarray(test)])
    predictions = []
    for spec in specs:
        if reuse and (folder / f"{spec.name}.npz").is_file():
            prediction = PredictionSet.load(folder, spec.name)
            if prediction.cases != cases:
                raise SpineSegDiffError(f"{folder / spec.name}.npz holds other cases; run without --reuse")
        else:
            if not quiet:
                print(f"predicting with {spec.name} on {len(cases)} held-out slices of fold {fold} ...", flush=True)
            prediction = predict_system(spec, images, cases, fold=fold, device=device, settings=settings,
                                        quiet=quiet)
            prediction.save(folder)
        predictions.append(prediction)
    entries = {cache.entries[i].case: cache.entries[i] for i in test}
    slices = {"images": {c: np.asarray(cache.images[i]) for c, i in zip(cases, test, strict=True)},
              "truth": {c: np.asarray(cache.labels[i]) for c, i in zip(cases, test, strict=True)},
              "contrast": {c: entries[c].contrast for c in cases}}
    return FoldPredictions(fold, predictions, slices)


def run_evaluation(specs: Sequence[SystemSpec], out: Path, *, metadata: Path | None = None,
                   ablation_files: Sequence[Path] = (), settings=None, device: str = "auto", reuse: bool = False,
                   folds: Sequence[int] | None = None, commands: Sequence[str] = (), quiet: bool = False) -> Path:
    """Predict (or reuse ``out/predictions``), score and report; returns the HTML report's path.

    Args:
        folds: ``None`` evaluates the runs' own held-out fold; a list of folds pools each fold's held-out
            predictions (``{fold}`` in a system's paths names that fold's run).
    """
    import json

    from spinesegdiff.evaluation.report import build_report

    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SpineSegDiffError(f"system names must be distinct, got {', '.join(names)}")
    if folds is not None and len(set(folds)) != len(folds):
        raise SpineSegDiffError(f"folds must be distinct, got {', '.join(map(str, folds))}")
    plan = []  # every fold's runs are checked before anything is predicted or written
    for fold in folds if folds is not None else [None]:
        fold_specs = specs if fold is None else [spec.for_fold(fold) for spec in specs]
        folder = out / "predictions" if fold is None else out / "predictions" / f"fold{fold}"
        plan.append((fold_specs, _checked_fold(fold_specs, fold), folder))
    per_fold = [_predict_fold(fold_specs, reference, folder, settings=settings, device=device, reuse=reuse,
                              quiet=quiet) for fold_specs, reference, folder in plan]
    predictions = [PredictionSet.concatenate([part.predictions[index] for part in per_fold])
                   for index in range(len(specs))]
    slices = {key: {case: value for part in per_fold for case, value in part.slices[key].items()}
              for key in ("images", "truth", "contrast")}
    flags = None
    if metadata is not None:
        from spinesegdiff.data.spider import pathology_flags

        flags = pathology_flags(metadata / "radiological_gradings.csv")
    ablations = [json.loads(Path(p).read_text()) for p in ablation_files]
    return build_report(predictions, images=slices["images"], truth=slices["truth"], contrast=slices["contrast"],
                        out=out, flags=flags, ablations=ablations, commands=commands,
                        folds=[part.fold for part in per_fold])
