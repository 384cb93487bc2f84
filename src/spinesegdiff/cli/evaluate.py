"""``spinesegdiff test``, ``benchmark``, ``ablate`` and ``evaluate``: held-out scores, speed and reports.

Each command parses its options, calls one function of :mod:`spinesegdiff.evaluation` and prints what it returns.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spinesegdiff.cli.options import (
    PRESEG_MODEL_HELP,
    add_sampler_options,
    parse_folds,
    sampler_settings,
)
from spinesegdiff.devices import DEVICE_CHOICES

ABLATION_PRESEGMENTERS = ("unet", "nnunet")


def _cmd_test(args: argparse.Namespace) -> int:
    from spinesegdiff.evaluation.fold_test import evaluate_test_fold, fold_report_table

    report = evaluate_test_fold(args.run, settings=sampler_settings(args), device=args.device,
                                checkpoint=args.checkpoint, quiet=args.quiet)
    print(fold_report_table(report.summary()))
    print(f"written: {Path(args.run) / 'test_metrics.json'}, {Path(args.run) / 'test_cases.csv'}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    import torch

    from spinesegdiff.evaluation.benchmark import benchmark_table, run_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    sampler = sampler_settings(args).resolved(refining=False)  # the benchmark samples from noise
    rows = run_benchmark(args.model, data_dir=args.data, samples=sampler.num_samples, steps=sampler.num_steps,
                         fuse_steps=sampler.fuse_steps, onnx=not args.no_onnx, precision=args.precision,
                         backend=args.backend)
    print(benchmark_table(rows))
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from spinesegdiff.evaluation.ablation import DEFAULT_T_PRE, ablation_table, run_ablation

    rows = run_ablation(args.run, args.preseg, args.preseg_model, t_pre=args.t_pre or DEFAULT_T_PRE,
                        settings=sampler_settings(args), device=args.device, checkpoint=args.checkpoint, out=args.out,
                        quiet=args.quiet)
    print(f"presegmenter {args.preseg}; {rows[0]['num_cases']} held-out central slices of {args.run}")
    print(ablation_table(rows))
    if args.out:
        print(f"written: {args.out / 'ablation.json'}, {args.out / 'ablation_cases.csv'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from spinesegdiff.evaluation.recording import recorded_command
    from spinesegdiff.evaluation.runner import run_evaluation
    from spinesegdiff.evaluation.systems import SystemSpec

    specs = [SystemSpec.parse(text) for text in args.system]
    commands = [recorded_command(["spinesegdiff", *args.argv])]
    page = run_evaluation(specs, args.out, metadata=args.metadata, ablation_files=args.ablation,
                          settings=sampler_settings(args), device=args.device, reuse=args.reuse,
                          folds=parse_folds(args.folds), commands=commands, quiet=args.quiet,
                          slab_cache=args.slab_cache)
    print(f"report: {page} (tables .md/.csv/.tex, cases.csv, figures/ beside it)")
    if args.metadata is None:
        print("no pathology analysis: no --metadata folder with radiological_gradings.csv given")
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
    be.add_argument("--data", type=Path,
                    help="SPIDER folder whose first series gives the slice (default: a phantom slice)")
    add_sampler_options(be)
    be.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    be.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime row")
    be.set_defaults(handler=_cmd_benchmark)


def add_ablate_parser(commands: argparse._SubParsersAction) -> None:
    ab = commands.add_parser("ablate", help="presegmentation ablation (paper Table 2): Dice and s / slice per T_pre")
    ab.add_argument("--run", required=True, type=Path, help="refiner run folder (its held-out fold is scored)")
    ab.add_argument("--checkpoint", default="best.pt", help="checkpoint in the run folder (default best.pt)")
    ab.add_argument("--t-pre", type=int, nargs="+",
                    help="refinement starts (default 0 30 100 300 500 1000; 1000 = from pure noise)")
    ab.add_argument("--out", type=Path, help="folder for ablation.json and ablation_cases.csv")
    add_sampler_options(ab)
    ab.add_argument("--preseg", required=True, choices=ABLATION_PRESEGMENTERS,
                    help="the presegmenter whose mask is refined")
    ab.add_argument("--preseg-model", type=Path, help=PRESEG_MODEL_HELP)
    ab.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    ab.add_argument("--quiet", action="store_true")
    ab.set_defaults(handler=_cmd_ablate)


def add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    ev = commands.add_parser("evaluate", help="compare systems on a held-out fold: tables, statistics, figures, HTML")
    ev.add_argument("--system", required=True, action="append",
                    help="NAME=RUN | NAME=RUN,preseg=unet:UNET_RUN,t_pre=30 | NAME=nnunet:FOLDER (2d or 3d_fullres; "
                         "repeat; the first is the primary system)")
    ev.add_argument("--out", required=True, type=Path, help="report folder")
    ev.add_argument("--metadata", type=Path,
                    help="folder with radiological_gradings.csv for the pathology analysis (default: none)")
    ev.add_argument("--ablation", type=Path, action="append", default=[],
                    help="ablation.json written by spinesegdiff ablate (repeat)")
    ev.add_argument("--folds", help="cross-validate over these test folds (0-4 or 0,1,2): each fold is predicted "
                                    "by its own models, named with {fold} in a system's paths")
    ev.add_argument("--reuse", action="store_true", help="reuse predictions already in OUT/predictions")
    ev.add_argument("--slab-cache", type=Path,
                    help="cache of all sagittal slices (preprocess --all-slices) from which the 3D systems (nnU-Net "
                         "3d_fullres, Diff-UNet 3D) take each held-out scan's slab (default: a Diff-UNet 3D run's "
                         "own training cache)")
    add_sampler_options(ev)
    ev.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(handler=_cmd_evaluate)
