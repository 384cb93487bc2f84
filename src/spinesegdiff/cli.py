"""The ``spinesegdiff`` command line: a thin layer over the package's functions.

Heavy modules (torch, SimpleITK, scipy) are imported inside each command, so ``spinesegdiff --help`` is
instant. Errors about the user's input are printed as one line, ``spinesegdiff: error: <file>: <problem>``,
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from spinesegdiff import __version__
from spinesegdiff.data.spider import CONTRAST_SETS
from spinesegdiff.devices import DEVICE_CHOICES

# kept here so that --help needs no torch import; tests check them against spinesegdiff.models.config
PRESETS = ("paper", "compact", "tiny")
VARIANTS = ("spinesegdiff", "spinesegdiff_no_ie", "diffunet2d", "iisdm", "unet")

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_contrast_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--contrast",
        choices=CONTRAST_SETS,
        default="T1w+T2w",
        help="contrast set (default: %(default)s; T2w includes t2_SPACE series unless --no-t2-space)",
    )
    parser.add_argument(
        "--no-t2-space", dest="t2_space", action="store_false", help="leave out the 3D t2_SPACE series"
    )


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from spinesegdiff.data.cache import build_cache

    cache = build_cache(
        args.data,
        args.out,
        contrast_set=args.contrast,
        include_t2_space=args.t2_space,
        slices="all" if args.all_slices else "central",
        partial_vertebrae_as_vertebra=not args.partial_as_background,
        oblique_deg=args.oblique_deg,
        progress=not args.quiet,
    )
    cases = cache.case_names
    patients = {e.patient for e in cache.entries}
    oblique = sorted({e.case for e in cache.entries if e.oblique})
    contrasts = sorted({e.contrast for e in cache.entries})
    print(
        f"cached {len(cache)} slices of {len(cases)} series from {len(patients)} patients "
        f"({', '.join(contrasts)}) in {cache.root}"
    )
    print(
        f"  images {cache.images.shape} {cache.images.dtype}, labels {cache.labels.shape} {cache.labels.dtype}"
    )
    print(
        f"  oblique series (> {args.oblique_deg} deg, excluded from evaluation): {len(oblique)}"
        + (f" ({', '.join(oblique[:10])})" if oblique else "")
    )
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from spinesegdiff.data.spider import find_cases
    from spinesegdiff.data.splits import apply_split, load_split, make_patient_folds, save_split

    cases = [
        c.case_id for c in find_cases(args.data, contrast_set=args.contrast, include_t2_space=args.t2_space)
    ]
    if args.paper_split:
        split = apply_split(load_split(args.paper_split), cases, source=args.paper_split)
    else:
        split = make_patient_folds(cases, num_folds=args.folds, seed=args.seed)
    path = save_split(split, args.out)
    sizes = ", ".join(f"{len(f['train'])}/{len(f['test'])}" for f in split)
    print(f"wrote {len(split)} folds (train/test cases: {sizes}) to {path}")
    return 0


_TRAIN_FLAGS = {
    "preset": "preset", "variant": "variant", "fold": "fold", "folds": "num_folds", "split_file": "split_file",
    "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "lr_schedule": "lr_schedule",
    "val_every": "val_every", "seed": "seed", "device": "device", "max_minutes": "max_minutes",
    "threads": "threads", "schedule": "schedule", "warmup_steps": "warmup_steps", "ema_decay": "ema_decay",
    "val_fraction": "val_fraction", "init_from": "init_from", "crossfit_part": "crossfit_part",
    "preseg_max_timestep": "preseg_max_timestep",
    "preseg_focus_timestep": "preseg_focus_timestep", "preseg_focus_share": "preseg_focus_share",
}


def _cmd_train(args: argparse.Namespace) -> int:
    from spinesegdiff.training.loop import TrainConfig, load_train_config_file, train

    settings = load_train_config_file(args.config) if args.config else {}
    for flag, key in _TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            settings[key] = value
    if settings.get("fold") == "all":
        settings["fold"] = -1
    elif "fold" in settings:
        settings["fold"] = int(settings["fold"])
    if args.holdout_patients:
        settings["holdout_patients"] = [p.strip() for p in args.holdout_patients.split(",") if p.strip()]
    if args.preseg_model:
        settings["preseg_models"] = [str(p) for p in args.preseg_model]
    if args.no_augment:
        settings["augment"] = {"enabled": False}
    if args.no_amp:
        settings["amp"] = False
    settings["data"], settings["out"] = str(args.data), str(args.out)
    try:
        config = TrainConfig.from_dict(settings)
    except (TypeError, ValueError) as err:
        from spinesegdiff.errors import SpineSegDiffError

        raise SpineSegDiffError(f"invalid training settings: {err}") from err
    run = train(config, resume=args.resume, progress=not args.quiet)
    print(f"run folder: {run} (best.pt, last.pt, config.json, splits_final.json)")
    return 0


def _add_sampler_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=15, help="diffusion samples S (default 15)")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps K (default 10)")
    parser.add_argument("--fuse-steps", type=int, default=10, help="last steps fused Ts (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="network arithmetic (default auto: bfloat16 where the hardware runs it natively)")
    parser.add_argument("--backend", choices=("auto", "torch", "openvino"), default="auto",
                        help="denoiser runtime (default auto: OpenVINO on a CPU where it is installed)")


def _add_preseg_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preseg", choices=("none", "unet", "nnunet"),
                        help="refine a presegmenter's mask (T_pre = 30, 2 DDIM steps) instead of sampling from "
                             "noise (10 steps); default: unet with the shipped models, none with --model")
    parser.add_argument("--preseg-model", type=Path,
                        help="presegmenter: a U-Net run or checkpoint (unet; default the shipped U-Net) or an "
                             "nnU-Net 2d model folder (nnunet)")
    parser.add_argument("--preseg-steps", type=int,
                        help="T_pre, the noise step the presegmentation is refined from (default 30; 0: the "
                             "presegmenter's own mask)")


def _presegmenter(args: argparse.Namespace):
    from spinesegdiff.devices import resolve_device
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.pipelines.presegmenters import load_presegmenter

    kind = args.preseg
    if kind is None:  # the shipped pipeline refines the shipped U-Net's mask; a user's own model samples
        kind = "unet" if getattr(args, "model", None) is None else "none"
    if kind == "none":
        if args.preseg_model is not None or args.preseg_steps is not None:
            raise SpineSegDiffError("--preseg-model and --preseg-steps need --preseg unet or nnunet")
        return None
    return load_presegmenter(kind, args.preseg_model, device=str(resolve_device(args.device, quiet=True)))


def _sampler_settings(args: argparse.Namespace):
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.pipelines.segmenter import SamplerSettings

    try:
        return SamplerSettings(num_samples=args.samples, num_steps=args.steps, fuse_steps=args.fuse_steps,
                               seed=args.seed, precision=args.precision, backend=args.backend,
                               preseg_steps=getattr(args, "preseg_steps", None))
    except ValueError as err:
        raise SpineSegDiffError(f"invalid sampler settings: {err}") from err


def _cmd_test(args: argparse.Namespace) -> int:
    from spinesegdiff.evaluation.fold_test import evaluate_test_fold

    report = evaluate_test_fold(args.run, settings=_sampler_settings(args), device=args.device,
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


def _scan_inputs(path: Path) -> list[Path]:
    """One scan (file or DICOM folder), or the scans in a folder (image files and DICOM subfolders)."""
    from spinesegdiff.data.io import image_suffix, is_dicom_folder
    from spinesegdiff.errors import InputError, MissingInputError

    if not path.exists():
        raise MissingInputError(path)
    if path.is_file() or is_dicom_folder(path):
        return [path]
    scans = sorted(p for p in path.iterdir()
                   if (p.is_file() and image_suffix(p) and not p.name.startswith(".")) or
                   (p.is_dir() and is_dicom_folder(p)))
    if not scans:
        raise InputError(path, "folder holds no scans (.mha, .nii, .nii.gz, .nrrd files or DICOM series)")
    return scans


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.pipelines.predict import load_scan, output_suffix, segment_loaded, write_outputs
    from spinesegdiff.pipelines.segmenter import Segmenter

    scans = _scan_inputs(args.input)
    output_suffix(None, args.format)  # validate --format before any work
    settings = _sampler_settings(args)
    presegmenter = _presegmenter(args)
    segmenter = None
    failures = 0
    batch = len(scans) > 1
    say = tqdm.write if batch else print
    for scan in tqdm(scans, desc="predict", unit="scan", disable=not batch or args.quiet):
        try:
            loaded = load_scan(scan, volume=args.volume)
        except SpineSegDiffError as err:
            failures += 1
            say(f"spinesegdiff: error: {err}", file=sys.stderr)
            continue
        if segmenter is None:  # loaded after the first good scan, so a bad input is reported first
            segmenter = Segmenter.from_checkpoint(args.model, device=args.device, settings=settings,
                                                  quiet=args.quiet, presegmenter=presegmenter)
        try:
            result = segment_loaded(loaded, segmenter)
            paths = write_outputs(result, args.output, output_format=args.format)
        except SpineSegDiffError as err:
            failures += 1
            say(f"spinesegdiff: error: {err}", file=sys.stderr)
            continue
        if not args.quiet:
            seconds = sum(v for k, v in result.timings.items() if k.endswith("_s"))
            say(f"{scan.name}: {paths['segmentation'].name}, {paths['uncertainty'].name}, "
                f"{paths['overlay'].name}, {paths['report'].name} ({seconds:.1f} s)")
    if failures:
        if batch:
            print(f"spinesegdiff: {failures} of {len(scans)} scans failed", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from spinesegdiff.assets import sample_scan_path
    from spinesegdiff.pipelines.predict import segment, write_outputs
    from spinesegdiff.pipelines.segmenter import Segmenter

    started = time.perf_counter()
    segmenter = Segmenter.from_checkpoint(None, device=args.device, settings=_sampler_settings(args), quiet=True,
                                          presegmenter=_presegmenter(args))
    result = segment(sample_scan_path(), segmenter=segmenter)
    paths = write_outputs(result, args.output)
    stats = result.statistics()
    print(f"segmented the shipped sample scan (SPIDER patient 107, T2 SPACE; van der Graaf et al., Sci Data 2024, "
          f"CC BY 4.0) on {segmenter.device} in {time.perf_counter() - started:.1f} s")
    for key in ("SC", "VB", "IVD"):
        entry = stats[key]
        print(f"  {entry['name']:<20} {entry['area_mm2']:>8.0f} mm^2   mean uncertainty {entry['uncertainty_mean']}")
    for name, path in paths.items():
        print(f"  {name:<13} {path}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.evaluation.ablation import ablation_table, run_ablation

    if args.preseg in (None, "none"):
        raise SpineSegDiffError("the ablation needs a presegmenter: --preseg unet or nnunet")
    args.preseg_steps = None
    presegmenter = _presegmenter(args)
    try:
        rows = run_ablation(args.run, presegmenter, t_pre=args.t_pre, settings=_sampler_settings(args),
                            device=args.device, checkpoint=args.checkpoint, out=args.out, quiet=args.quiet)
    except ValueError as err:
        raise SpineSegDiffError(str(err)) from err
    print(f"presegmenter {args.preseg}; {rows[0]['num_cases']} held-out central slices of {args.run}")
    print(ablation_table(rows))
    if args.out:
        print(f"written: {args.out / 'ablation.json'}, {args.out / 'ablation_cases.csv'}")
    return 0


def _parse_folds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` or ``"0-4"`` -> fold numbers; ``None`` stays ``None`` (the runs' own fold)."""
    from spinesegdiff.errors import SpineSegDiffError

    if text is None:
        return None
    folds: list[int] = []
    try:
        for part in text.split(","):
            first, sep, last = part.strip().partition("-")
            folds.extend(range(int(first), int(last) + 1) if sep else [int(first)])
    except ValueError:
        raise SpineSegDiffError(f"--folds {text!r}: expected fold numbers such as 0,1,2 or 0-4") from None
    if not folds or min(folds) < 0:
        raise SpineSegDiffError(f"--folds {text!r}: expected fold numbers such as 0,1,2 or 0-4")
    return folds


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from spinesegdiff.evaluation.runner import run_evaluation
    from spinesegdiff.evaluation.systems import SystemSpec

    specs = [SystemSpec.parse(text) for text in args.system]
    metadata = args.metadata if args.metadata is not None and args.metadata.exists() else None
    command = "spinesegdiff " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""
    page = run_evaluation(specs, args.out, metadata=metadata, ablation_files=args.ablation,
                          settings=_sampler_settings(args), device=args.device, reuse=args.reuse,
                          folds=_parse_folds(args.folds), commands=[command] if command else [], quiet=args.quiet)
    print(f"report: {page} (tables .md/.csv/.tex, cases.csv, figures/ beside it)")
    if metadata is None:
        print("no pathology analysis: --metadata folder with radiological_gradings.csv not found")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spinesegdiff",
        description="Lumbar spine MRI segmentation (spinal canal, vertebrae, discs) with a diffusion model "
        "and uncertainty heatmaps. SPIDER data: van der Graaf et al., Sci Data 2024 (CC BY 4.0).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    prep = commands.add_parser(
        "preprocess", help="turn a SPIDER folder into a cache of 320 x 320 model slices"
    )
    prep.add_argument("--data", required=True, type=Path, help="SPIDER folder with images/ and masks/")
    prep.add_argument(
        "--out", required=True, type=Path, help="cache folder to write (replaced if it is a cache)"
    )
    _add_contrast_options(prep)
    prep.add_argument(
        "--all-slices", action="store_true", help="cache every sagittal slice, not only the central"
    )
    prep.add_argument(
        "--partial-as-background",
        action="store_true",
        help="count partially visible vertebrae (SPIDER 101-125) as background, not vertebra",
    )
    prep.add_argument(
        "--oblique-deg",
        type=float,
        default=10.0,
        help="flag series whose slice normal is further than this from left-right (default 10)",
    )
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(handler=_cmd_preprocess)

    split = commands.add_parser("split", help="write patient-level K-fold splits (splits_final.json)")
    split.add_argument("--data", required=True, type=Path, help="SPIDER folder with images/ and masks/")
    split.add_argument("--out", required=True, type=Path, help="splits_final.json to write")
    _add_contrast_options(split)
    split.add_argument("--folds", type=int, default=5)
    split.add_argument("--seed", type=int, default=12345)
    split.add_argument(
        "--paper-split",
        type=Path,
        help="re-use the folds of this splits_final.json (the paper's, say) by patient number",
    )
    split.set_defaults(handler=_cmd_split)

    tr = commands.add_parser("train", help="train a diffusion model (or a baseline) on a cache or SPIDER folder")
    tr.add_argument("--data", required=True, type=Path, help="cache folder (spinesegdiff preprocess) or SPIDER folder")
    tr.add_argument("--out", required=True, type=Path, help="run folder for checkpoints and logs")
    tr.add_argument("--config", type=Path, help="JSON file of training settings (flags below override it)")
    tr.add_argument("--preset", choices=PRESETS, help="network size (default compact)")
    tr.add_argument("--variant", choices=VARIANTS, help="model variant (default spinesegdiff)")
    tr.add_argument("--fold", help="test fold 0..K-1, or 'all' to train on every case (default 0)")
    tr.add_argument("--folds", type=int, help="number of patient folds K (default 5)")
    tr.add_argument("--split-file", help="splits_final.json to take the folds from (ours or the paper's)")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4, as the paper)")
    tr.add_argument("--lr-schedule", choices=("constant", "cosine"))
    tr.add_argument("--warmup-steps", type=int)
    tr.add_argument("--ema-decay", type=float)
    tr.add_argument("--schedule", choices=("linear", "cosine"), help="noise schedule (default linear)")
    tr.add_argument("--val-every", type=int, help="validate every N epochs")
    tr.add_argument("--val-fraction", type=float,
                    help="share of the training patients held out for validation (default 0.15; 0: none)")
    tr.add_argument("--seed", type=int)
    tr.add_argument("--device", choices=DEVICE_CHOICES)
    tr.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    tr.add_argument("--max-minutes", type=float, help="stop (validate and save) after this much wall time")
    tr.add_argument("--holdout-patients", help="comma-separated patients also left out (cross-fitted U-Nets)")
    tr.add_argument("--crossfit-part", help="k/n: also hold out part k of n seeded parts of the fold's training "
                                            "patients (cross-fitted presegmenters for refiner training)")
    tr.add_argument("--init-from", help="start from this checkpoint's EMA weights (fine-tuning)")
    tr.add_argument("--preseg-model", action="append", type=Path,
                    help="built-in U-Net run for presegmentation refinement training (repeat: cross-fitted "
                         "U-Nets; each slice is presegmented by one that never saw its patient)")
    tr.add_argument("--preseg-max-timestep", type=int, help="largest T_pre trained (default 1000 - 1)")
    tr.add_argument("--preseg-focus-timestep", type=int, help="T_pre trained most (default 30)")
    tr.add_argument("--preseg-focus-share", type=float, help="share of steps drawn in [0, focus] (default 0.5)")
    tr.add_argument("--no-augment", action="store_true")
    tr.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(handler=_cmd_train)

    te = commands.add_parser("test", help="score a run on its held-out test fold (320 grid and native grid)")
    te.add_argument("--run", required=True, type=Path, help="run folder written by spinesegdiff train")
    te.add_argument("--checkpoint", default="best.pt", help="checkpoint in the run folder (default best.pt)")
    _add_sampler_options(te)
    te.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    te.add_argument("--quiet", action="store_true")
    te.set_defaults(handler=_cmd_test)

    be = commands.add_parser("benchmark", help="seconds per slice: the authors' sampling procedure vs ours")
    be.add_argument("--model", required=True, type=Path, help="checkpoint or run folder")
    be.add_argument("--data", type=Path, default=Path("../shared/data/spider-t2space"),
                    help="SPIDER folder for a real slice (a phantom slice where it is absent)")
    _add_sampler_options(be)
    be.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    be.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime row")
    be.set_defaults(handler=_cmd_benchmark)

    ab = commands.add_parser("ablate", help="presegmentation ablation (paper Table 2): Dice and s / slice per T_pre")
    ab.add_argument("--run", required=True, type=Path, help="refiner run folder (its held-out fold is scored)")
    ab.add_argument("--checkpoint", default="best.pt", help="checkpoint in the run folder (default best.pt)")
    ab.add_argument("--t-pre", type=int, nargs="+", default=[0, 30, 100, 300, 500, 1000],
                    help="refinement starts (default 0 30 100 300 500 1000; 1000 = from pure noise)")
    ab.add_argument("--out", type=Path, help="folder for ablation.json and ablation_cases.csv")
    _add_sampler_options(ab)
    _add_preseg_options(ab)
    ab.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    ab.add_argument("--quiet", action="store_true")
    ab.set_defaults(handler=_cmd_ablate)

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
    _add_sampler_options(ev)
    ev.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(handler=_cmd_evaluate)

    pr = commands.add_parser("predict", help="segment scans (.mha, .nii.gz, .nrrd, DICOM, or a folder of them)")
    pr.add_argument("-i", "--input", required=True, type=Path, help="scan, DICOM series folder, or folder of scans")
    pr.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    pr.add_argument("--model", type=Path, help="checkpoint or run folder (default: the shipped compact model)")
    pr.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    pr.add_argument("--volume", action="store_true", help="segment every sagittal slice, not only the central one")
    pr.add_argument("--format", help="output format: nii.gz, mha, nrrd or nii (default: the input's; DICOM -> nii.gz)")
    _add_sampler_options(pr)
    _add_preseg_options(pr)
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(handler=_cmd_predict)

    de = commands.add_parser("demo", help="segment the shipped sample scan with the shipped model")
    de.add_argument("-o", "--output", type=Path, default=Path("spinesegdiff-demo"), help="output folder")
    de.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    _add_sampler_options(de)
    _add_preseg_options(de)
    de.set_defaults(handler=_cmd_demo)
    return parser


def run_guarded(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; user-facing errors become one line on stderr and a non-zero exit code."""
    from spinesegdiff.errors import SpineSegDiffError

    try:
        return handler(args)
    except SpineSegDiffError as err:
        print(f"spinesegdiff: error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("spinesegdiff: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(args.handler, args)
