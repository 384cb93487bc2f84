"""``spinesegdiff evaluate-levels``: the per-level spine report checked against SPIDER's radiologists.

Parses its options, calls :func:`spinesegdiff.evaluation.levels.evaluate_levels` and writes the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spinesegdiff.cli.options import parse_folds
from spinesegdiff.devices import DEVICE_CHOICES


def _cmd_evaluate_levels(args: argparse.Namespace) -> int:
    import shlex

    from spinesegdiff.evaluation.levels import evaluate_levels, levels_markdown, write_levels_report

    results = evaluate_levels(args.data, args.metadata, runs=args.runs, diffusion_runs=args.diffusion_runs,
                              folds=parse_folds(args.folds) or [], resamples=args.bootstrap, seed=args.seed,
                              device=args.device)
    command = "spinesegdiff " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []))
    paths = write_levels_report(args.out, results, [command])
    print(levels_markdown(results, [command]), end="")
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def add_evaluate_levels_parser(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser("evaluate-levels",
                             help="check level names, disc height index, signal ratio and slip against SPIDER's "
                                  "radiological gradings (reference masks, held-out U-Nets and diffusion models)")
    ev.add_argument("--data", required=True, type=Path, help="SPIDER folder with images/ and masks/ (T2 series)")
    ev.add_argument("--metadata", required=True, type=Path, help="folder with radiological_gradings.csv")
    ev.add_argument("--out", required=True, type=Path, help="report folder (naming.csv, discs.csv, summary.json, "
                                                            "report.md)")
    ev.add_argument("--runs", help="U-Net runs, one per fold, with {fold} in the path (runs/unet-fold{fold}): each "
                                   "patient is also measured on the prediction of the run that held it out")
    ev.add_argument("--diffusion-runs", help="SpineSegDiff runs, one per fold, with {fold} in the path "
                                             "(runs/compact-cv-fold{fold}): each patient is also measured on the "
                                             "run's segmentation from noise, with its own uncertainty")
    ev.add_argument("--folds", default="0-4", help="the folds of --runs and --diffusion-runs (default 0-4)")
    ev.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of patients (default 2000)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", choices=DEVICE_CHOICES, default="cpu")
    ev.set_defaults(handler=_cmd_evaluate_levels)
