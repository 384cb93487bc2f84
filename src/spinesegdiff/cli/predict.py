"""``spinesegdiff predict`` and ``demo``: segment a user's scans, or the shipped sample scan."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spinesegdiff.cli.options import (
    EXIT_INPUT_ERROR,
    add_preseg_options,
    add_sampler_options,
    presegmenter_from_options,
    sampler_settings,
)
from spinesegdiff.devices import DEVICE_CHOICES


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
    settings = sampler_settings(args)
    presegmenter = presegmenter_from_options(args)
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
    segmenter = Segmenter.from_checkpoint(None, device=args.device, settings=sampler_settings(args), quiet=True,
                                          presegmenter=presegmenter_from_options(args))
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


def add_predict_parser(commands: argparse._SubParsersAction) -> None:
    pr = commands.add_parser("predict", help="segment scans (.mha, .nii.gz, .nrrd, DICOM, or a folder of them)")
    pr.add_argument("-i", "--input", required=True, type=Path, help="scan, DICOM series folder, or folder of scans")
    pr.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    pr.add_argument("--model", type=Path, help="checkpoint or run folder (default: the shipped compact model)")
    pr.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    pr.add_argument("--volume", action="store_true", help="segment every sagittal slice, not only the central one")
    pr.add_argument("--format", help="output format: nii.gz, mha, nrrd or nii (default: the input's; DICOM -> nii.gz)")
    add_sampler_options(pr)
    add_preseg_options(pr)
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(handler=_cmd_predict)


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    de = commands.add_parser("demo", help="segment the shipped sample scan with the shipped model")
    de.add_argument("-o", "--output", type=Path, default=Path("spinesegdiff-demo"), help="output folder")
    de.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    add_sampler_options(de)
    add_preseg_options(de)
    de.set_defaults(handler=_cmd_demo)
