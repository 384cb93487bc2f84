"""``spinesegdiff predict`` and ``demo``: segment a user's scans, or the shipped sample scan."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spinesegdiff.cli.options import (
    EXIT_INPUT_ERROR,
    add_cohort_options,
    add_device_option,
    add_engine_options,
    add_preseg_options,
    add_sampler_options,
    engine_choice,
    output_format_help,
    sampler_settings,
)
from spinesegdiff.pipelines.settings import LABEL_CONVENTIONS


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from spinesegdiff.pipelines.input_list import parse_where
    from spinesegdiff.pipelines.inputs import parse_shard
    from spinesegdiff.pipelines.predict import predict_scans

    shard = parse_shard(args.shard)  # a bad K/N is one line before any work
    outcomes = predict_scans(args.input, args.output, model=args.model, device=args.device,
                             settings=sampler_settings(args), preseg=args.preseg, preseg_model=args.preseg_model,
                             volume=args.volume, output_format=args.format, quiet=args.quiet,
                             progress=not args.quiet, shard=shard, skip_existing=args.skip_existing,
                             summary=True if args.summary else None, input_list=args.input_list,
                             where=parse_where(args.where), engine=engine_choice(args),
                             keep_all_parts=args.keep_all_parts, slice_index=args.slice, labels=args.labels,
                             series=args.series)
    failures = attempted = 0
    for outcome in outcomes:
        if outcome.note is not None:  # an input left out (a label map, an earlier output), a complete set
            if not args.quiet:
                tqdm.write(f"spinesegdiff: note: {outcome.note}", file=sys.stderr)
            continue
        attempted += 1
        if not outcome.ok:
            failures += 1
            tqdm.write(f"spinesegdiff: error: {outcome.error}", file=sys.stderr)
        elif not args.quiet:
            names = ", ".join(path.name for path in outcome.paths.values())
            tqdm.write(f"{outcome.scan.name}: {names} ({outcome.seconds:.1f} s)")
            chosen = _series_chosen(outcome.paths["report"]) if outcome.scan.is_dir() else None
            if chosen is not None:
                tqdm.write(f"spinesegdiff: note: {outcome.scan}: {chosen}", file=sys.stderr)
        if outcome.warning is not None:
            tqdm.write(f"spinesegdiff: warning: {outcome.warning}", file=sys.stderr)
    if failures:
        if attempted > 1:
            print(f"spinesegdiff: {failures} of {attempted} scans failed", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return 0


def _series_chosen(report: Path) -> str | None:
    """For a DICOM folder of several series whose series the rule chose: which it read and why (from the report)."""
    import json

    try:
        entry = json.loads(report.read_text(encoding="utf-8")).get("series") or {}
    except (OSError, ValueError):
        return None
    if entry.get("chosen_by") != "rule":
        return None
    described = " ".join(str(part) for part in (entry.get("number"), repr(entry.get("description") or ""))
                         if part not in (None, "", "''"))
    return f"read series {described} ({entry.get('reason')})"


def _cmd_demo(args: argparse.Namespace) -> int:
    from spinesegdiff.pipelines.predict import run_demo

    run = run_demo(args.output, device=args.device, settings=sampler_settings(args), preseg=args.preseg,
                   preseg_model=args.preseg_model)
    stats = run.result.statistics()
    print(f"segmented the shipped sample scan (SPIDER patient 107, T2 SPACE; van der Graaf et al., Sci Data 2024, "
          f"CC BY 4.0) on {run.device} in {run.seconds:.1f} s")
    for key in ("SC", "VB", "IVD"):
        entry = stats[key]
        print(f"  {entry['name']:<20} {entry['area_mm2']:>8.0f} mm^2   mean uncertainty {entry['uncertainty_mean']}")
    for name, path in run.paths.items():
        print(f"  {name:<13} {path}")
    return 0


def _slice_option(text: str) -> int | str:
    if text.strip().lower() in ("centre", "center"):
        return "centre"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a slice number or centre, got {text!r}") from None


def add_predict_parser(commands: argparse._SubParsersAction) -> None:
    pr = commands.add_parser("predict", help="segment scans (.mha, .nii.gz, .nrrd, DICOM, or a folder of them)")
    scans = pr.add_mutually_exclusive_group(required=True)
    scans.add_argument("-i", "--input", type=Path, help="scan, DICOM series folder, or folder of scans")
    scans.add_argument("--input-list", type=Path, metavar="FILE",
                       help="a file naming the scans: one path per line, or a CSV with a path (or input) column, "
                            "such as a summary.csv or a review page's triage export; relative paths are looked up "
                            "beside the list first")
    pr.add_argument("--where", action="append", metavar="COLUMN=VALUE",
                    help="with a CSV --input-list, only its rows with this value (repeatable; e.g. status=failed, "
                         "decision=needs_correction)")
    pr.add_argument("-o", "--output", required=True, type=Path,
                    help="output folder (may be the input folder: inputs are never overwritten)")
    pr.add_argument("--model", type=Path, help="checkpoint or run folder (default: the shipped compact model)")
    add_device_option(pr)
    pr.add_argument("--volume", action="store_true", help="segment every sagittal slice, not only one")
    pr.add_argument("--slice", type=_slice_option, metavar="N|centre",
                    help="the sagittal slice to segment (0-based, left to right), or centre; default: the "
                         "mid-sagittal slice chosen by anatomy (widest canal, spinous processes) near the centre")
    pr.add_argument("--series", metavar="UID|NUMBER|WORDS",
                    help="for a DICOM folder holding several series (a study export), the one to segment: its "
                         "SeriesInstanceUID, its SeriesNumber or words of its SeriesDescription; default: a "
                         "sagittal T2-weighted one (the report's series entry says which was read and why)")
    pr.add_argument("--format", help=output_format_help())
    pr.add_argument("--labels", choices=LABEL_CONVENTIONS, default="spinesegdiff",
                    help="label values: spinesegdiff (1 canal, 2 vertebra, 3 disc) or spider (SPIDER's instance "
                         "codes: vertebrae 1-25 from L5 up, canal 100, discs 201-225 from L5-S1 up; image formats)")
    pr.add_argument("--keep-all-parts", action="store_true",
                    help="keep every predicted part, also those that cannot belong to the spine (by default parts "
                         "far from the spinal column, a canal in front of it and fragments under 20 mm^2 are "
                         "removed; the JSON says how much)")
    add_sampler_options(pr)
    add_preseg_options(pr)
    add_cohort_options(pr)
    add_engine_options(pr)
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(handler=_cmd_predict)


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    de = commands.add_parser("demo", help="segment the shipped sample scan with the shipped model")
    de.add_argument("-o", "--output", type=Path, default=Path("spinesegdiff-demo"), help="output folder")
    add_device_option(de)
    add_sampler_options(de)
    add_preseg_options(de)
    de.set_defaults(handler=_cmd_demo)
