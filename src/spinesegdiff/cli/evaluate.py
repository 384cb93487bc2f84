"""``spinesegdiff test``, ``benchmark``, ``ablate`` and ``evaluate``: held-out scores, speed and reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spinesegdiff.cli.options import (
    add_preseg_options,
    add_sampler_options,
    parse_folds,
    presegmenter_from_options,
    sampler_settings,
)
from spinesegdiff.devices import DEVICE_CHOICES


def _cmd_test(args: argparse.Namespace) -> int:
    from spinesegdiff.evaluation.fold_test import evaluate_test_fold

    report = evaluate_test_fold(args.run, settings=sampler_settings(args), device=args.device,
                                checkpoint=args.checkpoint, quiet=args.quiet)
    summary = report.summary()
    print(f"{summary['num_cases']} held-out central slices, {summary['seconds_per_slice']:.2f} s per slice")
    print("| grid | SC | VB | IVD | mDice |")
    print("|---|---|---|---|---|")
    for grid in ("model_grid_320", "native_grid"):
        row = summary[grid]
        cells = " | ".join(f"{row[k]['mean']:.3f} +- {row[k]['std']:.3f}" for k in ("SC", "VB", "IVD"))
        print(f"| {grid} | {cells} | {row['mDice']:.3f} |")
    print(f"written: {Path(args.run) / 'test_metrics.json'}, {Path(args.run) / 'test_cases.csv'}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from spinesegdiff.evaluation.benchmark import run_benchmark

    data = args.data if args.data is not None and args.data.exists() else None
    rows = run_benchmark(args.model, data_dir=data, samples=args.samples, steps=args.steps,
                         fuse_steps=args.fuse_steps, threads=args.threads, onnx=not args.no_onnx,
                         precision=args.precision, backend=args.backend)
    print(f"{rows[0]['slice']}; {rows[0]['machine']}; torch {rows[0]['torch']}")
    print("| procedure | s / slice | network calls | speed-up vs (a) | label Dice vs (b32) |")
    print("|---|---|---|---|---|")
    for row in rows:
        agreement = row.get("label_agreement_with_b32", "")
        print(f"| {row['procedure']} | {row['seconds']:.2f} | {row['network_calls']} | {row['speedup_vs_a']:.1f}x "
              f"| {agreement} |")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.evaluation.ablation import ablation_table, run_ablation

    if args.preseg in (None, "none"):
        raise SpineSegDiffError("the ablation needs a presegmenter: --preseg unet or nnunet")
    args.preseg_steps = None
    presegmenter = presegmenter_from_options(args)
    try:
        rows = run_ablation(args.run, presegmenter, t_pre=args.t_pre, settings=sampler_settings(args),
                            device=args.device, checkpoint=args.checkpoint, out=args.out, quiet=args.quiet)
    except ValueError as err:
        raise SpineSegDiffError(str(err)) from err
    print(f"presegmenter {args.preseg}; {rows[0]['num_cases']} held-out central slices of {args.run}")
    print(ablation_table(rows))
    if args.out:
        print(f"written: {args.out / 'ablation.json'}, {args.out / 'ablation_cases.csv'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from spinesegdiff.evaluation.runner import run_evaluation
    from spinesegdiff.evaluation.systems import SystemSpec

    specs = [SystemSpec.parse(text) for text in args.system]
    metadata = args.metadata if args.metadata is not None and args.metadata.exists() else None
    command = "spinesegdiff " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    page = run_evaluation(specs, args.out, metadata=metadata, ablation_files=args.ablation,
                          settings=sampler_settings(args), device=args.device, reuse=args.reuse,
                          folds=parse_folds(args.folds), commands=[command] if command else [], quiet=args.quiet)
    print(f"report: {page} (tables .md/.csv/.tex, cases.csv, figures/ beside it)")
    if metadata is None:
        print("no pathology analysis: --metadata folder with radiological_gradings.csv not found")
    return 0


def add_test_parser(commands: argparse._SubParsersAction) -> None:
    te = commands.add_parser("test", help="score a run on its held-out test fold (320 grid and native grid)")
    te.add_argument("--run", required=True, type=Path, help="run folder written by spinesegdiff train")
    te.add_argument("--checkpoint", default="best.pt", help="checkpoint in the run folder (default best.pt)")
    add_sampler_options(te)
    te.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    te.add_argument("--quiet", action="store_true")
    te.set_defaults(handler=_cmd_test)


def add_benchmark_parser(commands: argparse._SubParsersAction) -> None:
    be = commands.add_parser("benchmark", help="seconds per slice: the authors' sampling procedure vs ours")
    be.add_argument("--model", required=True, type=Path, help="checkpoint or run folder")
    be.add_argument("--data", type=Path, default=Path("../shared/data/spider-t2space"),
                    help="SPIDER folder for a real slice (a phantom slice where it is absent)")
    add_sampler_options(be)
    be.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    be.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime row")
    be.set_defaults(handler=_cmd_benchmark)


def add_ablate_parser(commands: argparse._SubParsersAction) -> None:
    ab = commands.add_parser("ablate", help="presegmentation ablation (paper Table 2): Dice and s / slice per T_pre")
    ab.add_argument("--run", required=True, type=Path, help="refiner run folder (its held-out fold is scored)")
    ab.add_argument("--checkpoint", default="best.pt", help="checkpoint in the run folder (default best.pt)")
    ab.add_argument("--t-pre", type=int, nargs="+", default=[0, 30, 100, 300, 500, 1000],
                    help="refinement starts (default 0 30 100 300 500 1000; 1000 = from pure noise)")
    ab.add_argument("--out", type=Path, help="folder for ablation.json and ablation_cases.csv")
    add_sampler_options(ab)
    add_preseg_options(ab)
    ab.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    ab.add_argument("--quiet", action="store_true")
    ab.set_defaults(handler=_cmd_ablate)


def add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser("evaluate", help="compare systems on a held-out fold: tables, statistics, figures, HTML")
    ev.add_argument("--system", required=True, action="append",
                    help="NAME=RUN | NAME=RUN,preseg=unet:UNET_RUN,t_pre=30 | NAME=nnunet:FOLDER (repeat; the "
                         "first is the primary system)")
    ev.add_argument("--out", required=True, type=Path, help="report folder")
    ev.add_argument("--metadata", type=Path, default=Path("../shared/data/spider-metadata"),
                    help="folder with radiological_gradings.csv for the pathology analysis")
    ev.add_argument("--ablation", type=Path, action="append", default=[],
                    help="ablation.json written by spinesegdiff ablate (repeat)")
    ev.add_argument("--folds", help="cross-validate over these test folds (0-4 or 0,1,2): each fold is predicted "
                                    "by its own models, named with {fold} in a system's paths")
    ev.add_argument("--reuse", action="store_true", help="reuse predictions already in OUT/predictions")
    add_sampler_options(ev)
    ev.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(handler=_cmd_evaluate)
