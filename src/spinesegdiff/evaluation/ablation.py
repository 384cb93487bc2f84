"""The presegmentation ablation (paper Table 2): Dice and time per slice against the refinement start T_pre.

For every held-out central slice of a refiner run's test fold, the presegmenter's mask is noised to ``T_pre``
and refined (:class:`~spinesegdiff.pipelines.segmenter.Segmenter` with ``preseg_steps``). ``T_pre = 0`` is the
presegmenter alone; ``T_pre = 1000`` (the whole schedule) noises the mask away, which is sampling from pure
noise with the run's default ``K`` steps. Seconds per slice include the presegmenter.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS
from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.evaluation.held_out import HeldOutSlices, TimedOutputs, load_run_segmenter, segment_held_out
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.evaluation.recording import recorded_path
from spinesegdiff.files import atomic_write_text
from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter

DEFAULT_T_PRE: tuple[int, ...] = (0, 30, 100, 300, 500, 1000)


def _load_presegmenter(kind: str | None, model: str | Path | None, device: str):
    from spinesegdiff.devices import resolve_device
    from spinesegdiff.pipelines.presegmenters import load_presegmenter

    if kind in (None, "none"):
        raise SpineSegDiffError("the ablation needs a presegmenter: --preseg unet or nnunet")
    return load_presegmenter(kind, model, device=str(resolve_device(device, quiet=True)))


def _row(value: int, timed: TimedOutputs, scores: np.ndarray) -> dict:
    """One row of the table: ``t_pre``, network calls per slice, Dice mean and std, mDice, seconds per slice."""
    count = timed.num_slices
    return {
        "t_pre": value, "network_calls": sum(result.network_calls for result in timed.outputs) / count,
        "num_cases": count,
        **{name: {"mean": round(float(scores[:, k].mean()), 4), "std": round(float(scores[:, k].std()), 4)}
           for k, name in enumerate(STRUCTURE_ABBREVIATIONS)},
        "mDice": round(float(scores.mean()), 4), "seconds_per_slice": round(timed.seconds_per_slice, 3),
    }


def _cases_csv(per_case: list[dict]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=["t_pre", "case", *STRUCTURE_ABBREVIATIONS])
    writer.writeheader()
    writer.writerows(per_case)
    return buffer.getvalue()


def run_ablation(run_dir: str | Path, preseg: str, preseg_model: str | Path | None = None, *,
                 t_pre: Sequence[int] = DEFAULT_T_PRE, settings: SamplerSettings | None = None,
                 device: str = "auto", checkpoint: str = "best.pt", out: Path | None = None,
                 quiet: bool = False) -> list[dict]:
    """Score each ``T_pre`` on the run's held-out central slices; one row per ``T_pre``.

    Args:
        preseg, preseg_model: the presegmenter, as :func:`~spinesegdiff.pipelines.presegmenters.load_presegmenter`
            takes it (``unet`` with a U-Net run or checkpoint, default the shipped one; ``nnunet`` with a folder).

    Rows: ``t_pre``, ``network_calls`` per slice, per-structure Dice mean and std, ``mDice``,
    ``seconds_per_slice``. With ``out``, ``ablation.json`` and ``ablation_cases.csv`` are written there.
    """
    run_dir = Path(run_dir)
    presegmenter = _load_presegmenter(preseg, preseg_model, device)
    base, model_file = load_run_segmenter(run_dir, checkpoint=checkpoint, device=device, settings=settings,
                                          quiet=quiet)
    total = base.scheduler.num_train_timesteps
    for value in t_pre:
        if not 0 <= value <= total:
            raise InputError(None, f"T_pre must lie in 0..{total}, got {value}")
    held_out = HeldOutSlices.of_run(base.train_config, run_dir)
    requested = settings or SamplerSettings()  # each T_pre takes its own defaults (S, K) unless asked
    rows, per_case = [], []
    for value in t_pre:
        from_noise = value >= total
        segmenter = Segmenter(base.model, base.model_config, base.train_config, device=base.device,
                              settings=replace(requested, preseg_steps=None if from_noise else value),
                              presegmenter=None if from_noise else presegmenter,
                              scheduler_config=base.scheduler_config)
        timed = segment_held_out(segmenter.segment, held_out, desc=f"T_pre={value}", quiet=quiet)
        scores = np.asarray([dice_per_class(result.labels[0], held_out.truth(k))
                             for k, result in enumerate(timed.outputs)])
        for case, dice in zip(held_out.cases, scores, strict=True):
            named = {name: round(float(d), 4) for name, d in zip(STRUCTURE_ABBREVIATIONS, dice, strict=True)}
            per_case.append({"t_pre": value, "case": case, **named})
        rows.append(_row(value, timed, scores))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        summary = {"run": recorded_path(run_dir), "checkpoint": model_file.name, "fold": held_out.fold,
                   "presegmenter": getattr(presegmenter, "name", type(presegmenter).__name__),
                   "sampler": base.describe(), "rows": rows}
        atomic_write_text(out / "ablation.json", json.dumps(summary, indent=2))
        atomic_write_text(out / "ablation_cases.csv", _cases_csv(per_case))
    return rows


def ablation_table(rows: Sequence[dict]) -> str:
    """The rows as a Markdown table in the shape of the paper's Table 2."""
    lines = ["| T_pre | network calls / slice | SC | VB | IVD | mDice | s / slice |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = " | ".join(f"{row[k]['mean']:.3f} +- {row[k]['std']:.3f}" for k in STRUCTURE_ABBREVIATIONS)
        lines.append(f"| {row['t_pre']} | {row['network_calls']:g} | {cells} | {row['mDice']:.3f} | "
                     f"{row['seconds_per_slice']:.2f} |")
    return "\n".join(lines)
