"""Held-out evaluation of a training run on its own test fold.

Dice per structure on the central sagittal slice of every test patient (oblique series excluded), measured
twice: on the 320 x 320 model grid against the cached nearest-neighbour labels (as the paper reports), and
on the scan's native slice grid against the original mask, after the fused class probabilities are put back
with :func:`spinesegdiff.data.preprocess.restore_probabilities`.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinesegdiff.data.io import read_image
from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS, to_classes
from spinesegdiff.data.preprocess import native_slice, restore_probabilities
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.models.checkpoint import resolve_model_file
from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter


@dataclass(frozen=True)
class FoldReport:
    """Per-case Dice ``(N, 3)`` on the model grid and the native grid, and the sampler time per slice."""

    cases: list[str]
    model_grid: np.ndarray
    native_grid: np.ndarray
    seconds_per_slice: float

    def summary(self) -> dict:
        def stats(scores: np.ndarray) -> dict:
            return {
                **{name: {"mean": round(float(scores[:, k].mean()), 4), "std": round(float(scores[:, k].std()), 4)}
                   for k, name in enumerate(STRUCTURE_ABBREVIATIONS)},
                "mDice": round(float(scores.mean()), 4),
            }

        return {"num_cases": len(self.cases), "model_grid_320": stats(self.model_grid),
                "native_grid": stats(self.native_grid), "seconds_per_slice": round(self.seconds_per_slice, 3)}


def evaluate_test_fold(run_dir: str | Path, *, settings: SamplerSettings | None = None, device: str = "auto",
                       checkpoint: str = "best.pt", quiet: bool = False) -> FoldReport:
    """Segment a run's test-fold central slices and score them; writes ``test_metrics.json`` and
    ``test_cases.csv`` into the run folder."""
    from tqdm.auto import tqdm

    from spinesegdiff.data.folds import run_held_out_slices

    run_dir = Path(run_dir)
    model_file = resolve_model_file(run_dir / checkpoint if (run_dir / checkpoint).exists() else run_dir)
    segmenter = Segmenter.from_checkpoint(model_file, device=device, settings=settings, quiet=quiet)
    fold, cache, test = run_held_out_slices(segmenter.train_config, run_dir)
    cases, model_scores, native_scores, seconds = [], [], [], 0.0
    for index in tqdm(test, desc="test fold", unit="slice", disable=quiet):
        entry = cache.entries[index]
        started = time.perf_counter()
        result = segmenter.segment(np.asarray(cache.images[index])[None])
        seconds += time.perf_counter() - started
        model_scores.append(dice_per_class(result.labels[0], np.asarray(cache.labels[index])))
        grid = cache.grids[entry.case]
        truth = native_slice(to_classes(read_image(entry.mask_path)[0], source=entry.mask_path), grid,
                             entry.slice_index)
        native = restore_probabilities(result.class_probabilities[0], grid).argmax(axis=0)
        native_scores.append(dice_per_class(native, truth))
        cases.append(entry.case)
    report = FoldReport(cases, np.asarray(model_scores), np.asarray(native_scores), seconds / len(cases))
    summary = {
        "run": str(run_dir), "checkpoint": model_file.name, "fold": fold,
        "sampler": segmenter.describe(),
        "device": str(segmenter.device), **report.summary(),
    }
    (run_dir / "test_metrics.json").write_text(json.dumps(summary, indent=2))
    with (run_dir / "test_cases.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", *(f"{n}_320" for n in STRUCTURE_ABBREVIATIONS),
                         *(f"{n}_native" for n in STRUCTURE_ABBREVIATIONS)])
        for case, a, b in zip(cases, report.model_grid, report.native_grid, strict=True):
            writer.writerow([case, *np.round(a, 4), *np.round(b, 4)])
    return report
