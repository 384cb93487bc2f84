"""The ``spinesegdiff`` command line: a thin layer over the package's functions.

Heavy modules (torch, SimpleITK, scipy) are imported inside each command, so ``spinesegdiff --help`` is
instant. Errors about the user's input are printed as one line, ``spinesegdiff: error: <file>: <problem>``,
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from spinesegdiff import __version__
from spinesegdiff.cli import data, evaluate, levels, predict, review, train
from spinesegdiff.cli.options import EXIT_INPUT_ERROR, EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spinesegdiff",
        description="Lumbar spine MRI segmentation (spinal canal, vertebrae, discs) with a diffusion model "
        "and uncertainty heatmaps. SPIDER data: van der Graaf et al., Sci Data 2024 (CC BY 4.0).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data.add_preprocess_parser(commands)
    data.add_split_parser(commands)
    train.add_train_parser(commands)
    evaluate.add_test_parser(commands)
    evaluate.add_benchmark_parser(commands)
    evaluate.add_ablate_parser(commands)
    evaluate.add_evaluate_parser(commands)
    levels.add_evaluate_levels_parser(commands)
    predict.add_predict_parser(commands)
    predict.add_demo_parser(commands)
    review.add_review_parser(commands)
    return parser


def run_guarded(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; user-facing errors become one line on stderr and a non-zero exit code.

    While the command runs, SIGTERM and SIGINT raise :class:`~spinesegdiff.pipelines.publish.Interrupted`
    (deferred while a scan's outputs are being renamed into place), so the scan in progress is finished or
    rolled back; the exit code is then 128 + the signal (143 for SIGTERM, 130 for SIGINT). The previous
    handlers are restored when the command returns.
    """
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.pipelines.publish import interruptible

    try:
        with interruptible():
            return handler(args)
    except SpineSegDiffError as err:
        print(f"spinesegdiff: error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt as err:
        print(f"spinesegdiff: {err or 'interrupted'}", file=sys.stderr)
        return getattr(err, "exit_code", EXIT_INTERRUPTED)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as typed, for reports that record how they were made
    return run_guarded(args.handler, args)
