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

from spinesegdiff.data.slabs import Slabs
from spinesegdiff.errors import MissingInputError, SpineSegDiffError
from spinesegdiff.evaluation.held_out import HeldOutSlices
from spinesegdiff.evaluation.systems import PredictionSet, SystemSpec, needs_slabs, predict_system


def _reference_fold(specs: Sequence[SystemSpec]) -> HeldOutSlices:
    """The held-out slices of the first spinesegdiff run (every run must agree)."""
    from spinesegdiff.models.checkpoint import load_checkpoint, resolve_model_file

    runs = [s for s in specs if s.kind == "run"]
    if not runs:
        raise SpineSegDiffError("evaluate needs at least one spinesegdiff run to take the held-out fold from")
    reference = None
    for spec in runs:
        payload = load_checkpoint(resolve_model_file(spec.path), map_location="cpu")
        held_out = HeldOutSlices.of_run(payload["train_config"], spec.path)
        if reference is None:
            reference = held_out
        elif held_out.cases != reference.cases:
            raise SpineSegDiffError(f"{spec.path}: its held-out cases differ from {runs[0].path}'s; compare runs of "
                                    "one split and fold")
    return reference


def _checked_fold(specs: Sequence[SystemSpec], expected_fold: int | None) -> HeldOutSlices:
    """:func:`_reference_fold`, refusing runs whose test fold is not ``expected_fold``."""
    reference = _reference_fold(specs)
    if expected_fold is not None and reference.fold != expected_fold:
        run = next(s.path for s in specs if s.kind == "run")
        raise SpineSegDiffError(f"{run}: trained with test fold {reference.fold}, not {expected_fold}; name each "
                                "fold's run with {fold} in the system's path (NAME=runs/unet-fold{fold})")
    return reference


class FoldPredictions(NamedTuple):
    """One fold: its number, every system's predictions (in the order of the specs), and per case the image,
    the ground truth and the contrast (``slices["images" | "truth" | "contrast"][case]``)."""

    fold: int
    predictions: list[PredictionSet]
    slices: dict[str, dict]


def _slab_source(specs: Sequence[SystemSpec], slab_cache: Path | None) -> Path:
    """The cache of all slices that 3D systems read their slabs from: ``slab_cache``, else the first 3D run's
    own training cache."""
    if slab_cache is not None:
        return Path(slab_cache)
    from spinesegdiff.data.folds import run_fold_settings
    from spinesegdiff.models.checkpoint import load_checkpoint, resolve_model_file

    for spec in specs:
        if spec.kind == "run" and needs_slabs(spec):
            payload = load_checkpoint(resolve_model_file(spec.path), map_location="cpu")
            return Path(run_fold_settings(payload["train_config"])[0])
    raise SpineSegDiffError("an nnU-Net 3d system segments sagittal slabs: give --slab-cache, a cache of all "
                            "slices (spinesegdiff preprocess --all-slices)")


def _held_out_slabs(source: Path, held_out: HeldOutSlices) -> Slabs:
    """The held-out scans' slabs from the cache at ``source``, checked against the held-out slices."""
    from spinesegdiff.data.cache import load_cache
    from spinesegdiff.data.slabs import slabs_from_cache

    slabs = slabs_from_cache(load_cache(source), cases=held_out.cases)
    central, _ = slabs.central_slices()
    if not np.array_equal(central, held_out.images()):
        raise SpineSegDiffError(f"{source}: its central slices differ from the held-out slices evaluated; build "
                                "both caches from the same data with the same settings")
    return slabs


def _predict_fold(specs: Sequence[SystemSpec], held_out: HeldOutSlices, folder: Path, *, settings, device: str,
                  reuse: bool, quiet: bool, slab_cache: Path | None = None) -> FoldPredictions:
    """Every system's predictions on one fold (saved in ``folder``), with that fold's slices."""
    cases, fold = held_out.cases, held_out.fold
    images = held_out.images()
    predictions = []
    slabs = None
    for spec in specs:
        if reuse and (folder / f"{spec.name}.npz").is_file():
            prediction = PredictionSet.load(folder, spec.name)
            if prediction.cases != cases:
                raise SpineSegDiffError(f"{folder / spec.name}.npz holds other cases; run without --reuse")
        else:
            if not quiet:
                print(f"predicting with {spec.name} on {len(cases)} held-out slices of fold {fold} ...", flush=True)
            if slabs is None and needs_slabs(spec):
                slabs = _held_out_slabs(_slab_source(specs, slab_cache), held_out)
            prediction = predict_system(spec, images, cases, fold=fold, device=device, settings=settings,
                                        quiet=quiet, slabs=slabs)
            prediction.save(folder)
        predictions.append(prediction)
    slices = {"images": {c: held_out.image(k) for k, c in enumerate(cases)},
              "truth": {c: held_out.truth(k) for k, c in enumerate(cases)},
              "contrast": {entry.case: entry.contrast for entry in held_out.entries}}
    return FoldPredictions(fold, predictions, slices)


def run_evaluation(specs: Sequence[SystemSpec], out: Path, *, metadata: Path | None = None,
                   ablation_files: Sequence[Path] = (), settings=None, device: str = "auto", reuse: bool = False,
                   folds: Sequence[int] | None = None, commands: Sequence[str] = (), quiet: bool = False,
                   slab_cache: Path | None = None) -> Path:
    """Predict (or reuse ``out/predictions``), score and report; returns the HTML report's path.

    Args:
        metadata: a folder with ``radiological_gradings.csv`` for the pathology analysis (``None``: no analysis).
        folds: ``None`` evaluates the runs' own held-out fold; a list of folds pools each fold's held-out
            predictions (``{fold}`` in a system's paths names that fold's run).
        slab_cache: a cache of all slices (``--all-slices``) for the 3D systems' slabs (``None``: a Diff-UNet 3D
            run's own training cache).
    """
    import json

    from spinesegdiff.evaluation.report import build_report

    gradings = None if metadata is None else Path(metadata) / "radiological_gradings.csv"
    for path, what in [(gradings, "file")] + [
            (p, "ablation file") for p in ablation_files]:
        if path is not None and not Path(path).is_file():
            raise MissingInputError(path, what)
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
                              quiet=quiet, slab_cache=slab_cache) for fold_specs, reference, folder in plan]
    predictions = [PredictionSet.concatenate([part.predictions[index] for part in per_fold])
                   for index in range(len(specs))]
    slices = {key: {case: value for part in per_fold for case, value in part.slices[key].items()}
              for key in ("images", "truth", "contrast")}
    flags = None
    if gradings is not None:
        from spinesegdiff.data.spider import pathology_flags

        flags = pathology_flags(gradings)
    ablations = [json.loads(Path(p).read_text(encoding="utf-8")) for p in ablation_files]
    return build_report(predictions, images=slices["images"], truth=slices["truth"], contrast=slices["contrast"],
                        out=out, flags=flags, ablations=ablations, commands=commands,
                        folds=[part.fold for part in per_fold])
