"""``spinesegdiff evaluate``: predict with every system on one held-out fold, then build the report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.evaluation.systems import PredictionSet, SystemSpec, predict_system


def _reference_fold(specs: Sequence[SystemSpec]):
    """The cache, fold number and test indices of the first spinesegdiff run (every run must agree)."""
    from spinesegdiff.checkpoint import load_checkpoint, resolve_model_file
    from spinesegdiff.training import held_out_slices

    runs = [s for s in specs if s.kind == "run"]
    if not runs:
        raise SpineSegDiffError("evaluate needs at least one spinesegdiff run to take the held-out fold from")
    reference = None
    for spec in runs:
        payload = load_checkpoint(resolve_model_file(spec.path), map_location="cpu")
        config, cache, test = held_out_slices(payload["train_config"], spec.path)
        cases = [cache.entries[i].case for i in test]
        if reference is None:
            reference = (cache, config.fold, test, cases)
        elif cases != reference[3]:
            raise SpineSegDiffError(f"{spec.path}: its held-out cases differ from {runs[0].path}'s; compare runs of "
                                    "one split and fold")
    return reference


def run_evaluation(specs: Sequence[SystemSpec], out: Path, *, metadata: Path | None = None,
                   ablation_files: Sequence[Path] = (), settings=None, device: str = "auto", reuse: bool = False,
                   commands: Sequence[str] = (), quiet: bool = False) -> Path:
    """Predict (or reuse ``out/predictions``), score and report; returns the HTML report's path."""
    import json

    from spinesegdiff.evaluation.report import build_report

    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SpineSegDiffError(f"system names must be distinct, got {', '.join(names)}")
    cache, fold, test, cases = _reference_fold(specs)
    images = np.asarray(cache.images[np.asarray(test)])
    predictions = []
    folder = out / "predictions"
    for spec in specs:
        if reuse and (folder / f"{spec.name}.npz").is_file():
            prediction = PredictionSet.load(folder, spec.name)
            if prediction.cases != cases:
                raise SpineSegDiffError(f"{folder / spec.name}.npz holds other cases; run without --reuse")
        else:
            if not quiet:
                print(f"predicting with {spec.name} on {len(cases)} held-out slices ...", flush=True)
            prediction = predict_system(spec, images, cases, fold=fold, device=device, settings=settings,
                                        quiet=quiet)
            prediction.save(folder)
        predictions.append(prediction)
    flags = None
    if metadata is not None:
        from spinesegdiff.spider import pathology_flags

        flags = pathology_flags(metadata / "radiological_gradings.csv")
    ablations = [json.loads(Path(p).read_text()) for p in ablation_files]
    entries = {cache.entries[i].case: cache.entries[i] for i in test}
    return build_report(
        predictions, images={c: np.asarray(cache.images[i]) for c, i in zip(cases, test, strict=True)},
        truth={c: np.asarray(cache.labels[i]) for c, i in zip(cases, test, strict=True)},
        contrast={c: entries[c].contrast for c in cases}, out=out, flags=flags, ablations=ablations,
        commands=commands)
