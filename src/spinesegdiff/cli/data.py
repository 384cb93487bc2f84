"""``spinesegdiff preprocess`` and ``split``: the SPIDER cache and the patient folds."""

from __future__ import annotations

import argparse
from pathlib import Path

from spinesegdiff.cli.options import add_contrast_options


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


def add_preprocess_parser(commands: argparse._SubParsersAction) -> None:
    prep = commands.add_parser(
        "preprocess", help="turn a SPIDER folder into a cache of 320 x 320 model slices"
    )
    prep.add_argument("--data", required=True, type=Path, help="SPIDER folder with images/ and masks/")
    prep.add_argument(
        "--out", required=True, type=Path, help="cache folder to write (replaced if it is a cache)"
    )
    add_contrast_options(prep)
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


def add_split_parser(commands: argparse._SubParsersAction) -> None:
    split = commands.add_parser("split", help="write patient-level K-fold splits (splits_final.json)")
    split.add_argument("--data", required=True, type=Path, help="SPIDER folder with images/ and masks/")
    split.add_argument("--out", required=True, type=Path, help="splits_final.json to write")
    add_contrast_options(split)
    split.add_argument("--folds", type=int, default=5)
    split.add_argument("--seed", type=int, default=12345)
    split.add_argument(
        "--paper-split",
        type=Path,
        help="re-use the folds of this splits_final.json (the paper's, say) by patient number",
    )
    split.set_defaults(handler=_cmd_split)
