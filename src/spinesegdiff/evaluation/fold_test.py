"""Held-out evaluation of a training run on its own test fold.

Dice per structure on the central sagittal slice of every test patient (oblique series excluded), measured
twice: on the 320 x 320 model grid against the cached nearest-neighbour labels (as the paper reports), and
on the scan's native slice grid against the original mask, after the fused class probabilities are put back
with :func:`spinesegdiff.data.preprocess.restore_probabilities`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinesegdiff.data.cache import SliceEntry
from spinesegdiff.data.io import read_image
from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS, to_classes
from spinesegdiff.data.preprocess import native_slice, restore_probabilities
from spinesegdiff.evaluation.held_out import HeldOutSlices, load_run_segmenter, segment_held_out
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.evaluation.recording import recorded_path
from spinesegdiff.files import atomic_write_text
from spinesegdiff.pipelines.segmenter import SamplerSettings


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

    def cases_csv(self) -> str:
        """``test_cases.csv``: one row per case, Dice per structure on both grids (4 decimals)."""
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(["case", *(f"{n}_320" for n in STRUCTURE_ABBREVIATIONS),
                         *(f"{n}_native" for n in STRUCTURE_ABBREVIATIONS)])
        for case, a, b in zip(self.cases, self.model_grid, self.native_grid, strict=True):
            writer.writerow([case, *np.round(a, 4), *np.round(b, 4)])
        return buffer.getvalue()


def fold_report_table(summary: dict) -> str:
    """:meth:`FoldReport.summary` as the lines ``spinesegdiff test`` prints (slice count, time, Dice table)."""
    lines = [f"{summary['num_cases']} held-out central slices, {summary['seconds_per_slice']:.2f} s per slice",
             "| grid | SC | VB | IVD | mDice |", "|---|---|---|---|---|"]
    for grid in ("model_grid_320", "native_grid"):
        row = summary[grid]
        cells = " | ".join(f"{row[k]['mean']:.3f} +- {row[k]['std']:.3f}" for k in STRUCTURE_ABBREVIATIONS)
        lines.append(f"| {grid} | {cells} | {row['mDice']:.3f} |")
    return "\n".join(lines)


def native_grid_dice(class_probabilities: np.ndarray, entry: SliceEntry, held_out: HeldOutSlices) -> np.ndarray:
    """Dice per structure on the scan's own slice grid: the ``(4, 320, 320)`` class probabilities put back on
    the native grid and argmaxed, against the original mask's slice."""
    grid = held_out.cache.grids[entry.case]
    truth = native_slice(to_classes(read_image(entry.mask_path)[0], source=entry.mask_path), grid, entry.slice_index)
    native = restore_probabilities(class_probabilities, grid).argmax(axis=0)
    return dice_per_class(native, truth)


def evaluate_test_fold(run_dir: str | Path, *, settings: SamplerSettings | None = None, device: str = "auto",
                       checkpoint: str = "best.pt", quiet: bool = False) -> FoldReport:
    """Segment a run's test-fold central slices and score them; writes ``test_metrics.json`` and
    ``test_cases.csv`` into the run folder."""
    run_dir = Path(run_dir)
    segmenter, model_file = load_run_segmenter(run_dir, checkpoint=checkpoint, device=device, settings=settings,
                                               quiet=quiet)
    held_out = HeldOutSlices.of_run(segmenter.train_config, run_dir)
    timed = segment_held_out(segmenter.segment, held_out, desc="test fold", quiet=quiet)
    model_scores, native_scores = [], []
    for k, (entry, result) in enumerate(zip(held_out.entries, timed.outputs, strict=True)):
        model_scores.append(dice_per_class(result.labels[0], held_out.truth(k)))
        native_scores.append(native_grid_dice(result.class_probabilities[0], entry, held_out))
    report = FoldReport(held_out.cases, np.asarray(model_scores), np.asarray(native_scores),
                        timed.seconds_per_slice)
    summary = {
        "run": recorded_path(run_dir), "checkpoint": model_file.name, "fold": held_out.fold,
        "sampler": segmenter.describe(),
        "device": str(segmenter.device), **report.summary(),
    }
    atomic_write_text(run_dir / "test_metrics.json", json.dumps(summary, indent=2))
    atomic_write_text(run_dir / "test_cases.csv", report.cases_csv())
    return report
