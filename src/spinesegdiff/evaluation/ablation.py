"""The presegmentation ablation (paper Table 2): Dice and time per slice against the refinement start T_pre.

For every held-out central slice of a refiner run's test fold, the presegmenter's mask is noised to ``T_pre``
and refined (:class:`~spinesegdiff.pipelines.segmenter.Segmenter` with ``preseg_steps``). ``T_pre = 0`` is the
presegmenter alone; ``T_pre = 1000`` (the whole schedule) noises the mask away, which is sampling from pure
noise with the run's default ``K`` steps. Seconds per slice include the presegmenter.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.pipelines.presegmenters import Presegmenter
from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter

DEFAULT_T_PRE: tuple[int, ...] = (0, 30, 100, 300, 500, 1000)


def run_ablation(run_dir: str | Path, presegmenter: Presegmenter, *, t_pre: Sequence[int] = DEFAULT_T_PRE,
                 settings: SamplerSettings | None = None, device: str = "auto", checkpoint: str = "best.pt",
                 out: Path | None = None, quiet: bool = False) -> list[dict]:
    """Score each ``T_pre`` on the run's held-out central slices; one row per ``T_pre``.

    Rows: ``t_pre``, ``network_calls`` per slice, per-structure Dice mean and std, ``mDice``,
    ``seconds_per_slice``. With ``out``, ``ablation.json`` and ``ablation_cases.csv`` are written there.
    """
    from tqdm.auto import tqdm

    from spinesegdiff.data.folds import run_held_out_slices
    from spinesegdiff.models.checkpoint import resolve_model_file

    run_dir = Path(run_dir)
    model_file = resolve_model_file(run_dir / checkpoint if (run_dir / checkpoint).exists() else run_dir)
    base = Segmenter.from_checkpoint(model_file, device=device, settings=settings, quiet=quiet)
    fold, cache, test = run_held_out_slices(base.train_config, run_dir)
    total = base.scheduler.num_train_timesteps
    rows, per_case = [], []
    for value in t_pre:
        if not 0 <= value <= total:
            raise ValueError(f"T_pre must lie in 0..{total}, got {value}")
        from_noise = value >= total
        segmenter = Segmenter(base.model, base.model_config, base.train_config, device=base.device,
                              settings=replace(base.settings, preseg_steps=None if from_noise else value),
                              presegmenter=None if from_noise else presegmenter)
        scores, seconds, calls = [], 0.0, 0
        for index in tqdm(test, desc=f"T_pre={value}", unit="slice", disable=quiet):
            started = time.perf_counter()
            result = segmenter.segment(np.asarray(cache.images[index])[None])
            seconds += time.perf_counter() - started
            calls += result.network_calls
            dice = dice_per_class(result.labels[0], np.asarray(cache.labels[index]))
            scores.append(dice)
            named = {name: round(float(d), 4) for name, d in zip(STRUCTURE_ABBREVIATIONS, dice, strict=True)}
            per_case.append({"t_pre": value, "case": cache.entries[index].case, **named})
        scores_array = np.asarray(scores)
        rows.append({
            "t_pre": value, "network_calls": calls / len(test), "num_cases": len(test),
            **{name: {"mean": round(float(scores_array[:, k].mean()), 4),
                      "std": round(float(scores_array[:, k].std()), 4)}
               for k, name in enumerate(STRUCTURE_ABBREVIATIONS)},
            "mDice": round(float(scores_array.mean()), 4), "seconds_per_slice": round(seconds / len(test), 3),
        })
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        summary = {"run": str(run_dir), "checkpoint": model_file.name, "fold": fold,
                   "presegmenter": getattr(presegmenter, "name", type(presegmenter).__name__),
                   "sampler": base.describe(), "rows": rows}
        (out / "ablation.json").write_text(json.dumps(summary, indent=2))
        with (out / "ablation_cases.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["t_pre", "case", *STRUCTURE_ABBREVIATIONS])
            writer.writeheader()
            writer.writerows(per_case)
    return rows


def ablation_table(rows: Sequence[dict]) -> str:
    """The rows as a Markdown table in the shape of the paper's Table 2."""
    lines = ["| T_pre | network calls / slice | SC | VB | IVD | mDice | s / slice |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = " | ".join(f"{row[k]['mean']:.3f} +- {row[k]['std']:.3f}" for k in STRUCTURE_ABBREVIATIONS)
        lines.append(f"| {row['t_pre']} | {row['network_calls']:g} | {cells} | {row['mDice']:.3f} | "
                     f"{row['seconds_per_slice']:.2f} |")
    return "\n".join(lines)
