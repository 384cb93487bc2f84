"""``spinesegdiff review OUT``: the triage page of a results folder (most doubtful case first)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MOST_DOUBTFUL_SHOWN = 5


def _doubt(case) -> str:
    if case.failed:
        return "failed"
    value = case.quality_score if case.quality_score is not None else case.uncertainty_mean
    label = "score" if case.quality_score is not None else "uncertainty"
    return f"{label} {value:.4f}" if value is not None else "no measure"


def _cmd_review(args: argparse.Namespace) -> int:
    from spinesegdiff.errors import InputError
    from spinesegdiff.review import build_review

    if args.jobs < 1:
        raise InputError(None, f"--jobs must be at least 1, got {args.jobs}")
    page = build_review(args.output, workers=args.jobs)
    for note in page.notes:
        print(f"spinesegdiff: note: {note}", file=sys.stderr)
    count = len(page.cases)
    print(f"review page: {page.path} ({count} case{'s' if count != 1 else ''}, {page.drawn} with pictures, "
          f"most doubtful first by {page.measure}; {page.seconds:.1f} s)")
    shown = ", ".join(f"{case.case} ({_doubt(case)})" for case in page.cases[:MOST_DOUBTFUL_SHOWN])
    print(f"most doubtful: {shown}")
    if args.open:
        import webbrowser

        if not webbrowser.open(page.path.resolve().as_uri()):
            print("spinesegdiff: note: no browser could be started: open the page yourself", file=sys.stderr)
    return 0


def add_review_parser(commands: argparse._SubParsersAction) -> None:
    re_ = commands.add_parser("review", help="write a triage page for a results folder (most doubtful case first)")
    re_.add_argument("output", type=Path, metavar="OUT", help="the output folder of spinesegdiff predict")
    re_.add_argument("--open", action="store_true", help="open the page in the default web browser")
    re_.add_argument("--jobs", type=int, default=2, metavar="N", help="cases drawn at the same time (default 2)")
    re_.set_defaults(handler=_cmd_review)
