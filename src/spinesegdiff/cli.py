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

CONTRAST_SETS = ("T1w", "T2w", "T1w+T2w")

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
    from spinesegdiff.cache import build_cache

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
    from spinesegdiff.spider import find_cases
    from spinesegdiff.splits import apply_split, load_split, make_patient_folds, save_split

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
}


def _cmd_train(args: argparse.Namespace) -> int:
    from spinesegdiff.training import TrainConfig, load_train_config_file, train

    settings = load_train_config_file(args.config) if args.config else {}
    for flag, key in _TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            settings[key] = value
    if settings.get("fold") == "all":
        settings["fold"] = -1
    elif "fold" in settings:
        settings["fold"] = int(settings["fold"])
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
    tr.add_argument("--preset", choices=("paper", "compact", "tiny"), help="network size (default compact)")
    tr.add_argument("--variant", choices=("spinesegdiff", "spinesegdiff_no_ie", "diffunet2d", "iisdm"),
                    help="model variant (default spinesegdiff)")
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
    tr.add_argument("--seed", type=int)
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"))
    tr.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    tr.add_argument("--max-minutes", type=float, help="stop (validate and save) after this much wall time")
    tr.add_argument("--no-augment", action="store_true")
    tr.add_argument("--no-amp", action="store_true", help="no bfloat16 autocast on CUDA")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(handler=_cmd_train)
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
