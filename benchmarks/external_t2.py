"""The shipped pipeline on real 2D spin-echo T2 from two other sources (``../shared/data/external-t2-2d``).

Scores as that folder's README says (:mod:`spinesegdiff.evaluation.partial_labels`): ``vb/`` body Dice within
3 mm of the reference bodies and body recall, ``ivd/`` disc Dice within the labelled discs' rows (+5 mm), and for
both the share of predicted pixels more than 15 mm in front of the spine. ``--volume`` segments all 21 slices
and reports the worst slice's share in front (the issue's target: nothing drawn more than 15 mm in front of the
spine on any slice). ``--slice-step N`` keeps every N-th slice (a series acquired N mm apart, as 2D spin-echo
series are) and segments each of the N such series of a scan, so the mid-sagittal choice works from coarse
slices; a scan's Dice and recall are then the means over its series, its two in-front shares the worst
series'. ``--crop-mm SI AP`` cuts each scan's field of view down to SI x AP mm around the middle of its
reference's labels (a small field of view, smaller than the 320 mm model grid). These scans are for evaluation
only; no model here was trained on them.

    python benchmarks/external_t2.py [--data ../shared/data/external-t2-2d] [--volume] [--slice-step N]
        [--crop-mm SI AP] [--model M --preseg none | --preseg unet --preseg-model U]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sagittal_cuts import every_nth_slice

from spinesegdiff.data.io import Geometry, read_sitk_image
from spinesegdiff.data.preprocess import native_slice
from spinesegdiff.evaluation.partial_labels import body_scores, disc_scores, far_in_front_fraction
from spinesegdiff.pipelines.predict import segment
from spinesegdiff.pipelines.segmenter import Segmenter
from spinesegdiff.pipelines.settings import SamplerSettings


def _mean_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _mean(values: list[float | None]) -> str:
    mean = _mean_or_none(values)
    return "n/a" if mean is None else f"{mean:.3f}"


def _score_scan(result, reference: np.ndarray, kind: str) -> dict[str, float | None]:
    """Scores on the segmented slice nearest the centre, and the worst share in front over all segmented slices."""
    grid = result.prepared.grid
    spacing = (grid.rows.native_spacing, grid.cols.native_spacing)
    indices = result.prepared.indices
    central = min(indices, key=lambda k: abs(k - grid.central_index))
    labels = native_slice(result.labels, grid, central)
    truth = native_slice(reference, grid, central)
    scores = body_scores(labels, truth, spacing) if kind == "vb" else disc_scores(labels, truth, spacing)
    shares = []
    for k in indices:  # a slice without reference pixels is judged against the central slice's spine
        spine = native_slice(reference, grid, k) > 0
        shares.append(far_in_front_fraction(native_slice(result.labels, grid, k),
                                            spine if spine.any() else truth > 0, spacing))
    scores["far_in_front"] = far_in_front_fraction(labels, truth > 0, spacing)
    scores["worst_far_in_front"] = max((s for s in shares if s is not None), default=None)
    scores["slice"] = central
    return scores


def crop_around_labels(volume, mask, size_mm: tuple[float, float]):
    """``volume`` and ``mask`` (``SimpleITK`` images of a PIR series: x anterior-posterior, y superior-inferior)
    cut to ``size_mm`` = (superior-inferior, anterior-posterior) mm around the middle of the mask's labels."""
    labelled = np.argwhere(sitk.GetArrayFromImage(mask) > 0)  # (z, y, x)
    middle = (labelled.min(axis=0) + labelled.max(axis=0)) / 2
    start, stop = [0, 0, 0], list(volume.GetSize())
    for axis, extent in ((1, size_mm[0]), (0, size_mm[1])):  # ITK axis y: superior-inferior, x: the other
        half = round(extent / volume.GetSpacing()[axis] / 2)
        centre = round(float(middle[2 - axis]))
        start[axis] = max(0, centre - half)
        stop[axis] = min(volume.GetSize()[axis], centre + half)
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    return volume[box], mask[box]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/external-t2-2d"))
    parser.add_argument("--volume", action="store_true", help="segment every slice (worst share in front)")
    parser.add_argument("--model", help="a diffusion model (default: the shipped refiner with the shipped U-Net)")
    parser.add_argument("--preseg", default=None, help="none, unet or nnunet (as predict's --preseg)")
    parser.add_argument("--preseg-model", help="the presegmenter's model (a U-Net run or checkpoint)")
    parser.add_argument("--samples", type=int, help="S (default: the pipeline's, 4 refining, 15 from noise)")
    parser.add_argument("--steps", type=int, help="DDIM steps K (default: the pipeline's, 1 from T_pre = 30)")
    parser.add_argument("--keep-all-parts", action="store_true", help="without the plausibility clean-up")
    parser.add_argument("--crop-mm", type=float, nargs=2, metavar=("SI", "AP"),
                        help="cut each scan to SI x AP mm around its labels (a small field of view)")
    parser.add_argument("--slice-step", type=int, default=1,
                        help="keep every N-th slice: N series per scan, N mm between their slices (default 1: all)")
    args = parser.parse_args()
    from spinesegdiff.pipelines.presegmenters import resolve_presegmenter

    presegmenter = resolve_presegmenter(args.preseg, args.preseg_model, user_model=args.model is not None, device="cpu")
    segmenter = Segmenter.from_checkpoint(args.model, device="cpu", quiet=True, presegmenter=presegmenter,
                                          settings=SamplerSettings(num_samples=args.samples, num_steps=args.steps))
    print(f"{segmenter.model_name}; {platform.processor() or platform.machine()}; "
          f"{'all slices' if args.volume else 'central slice'}; "
          f"{f'every {args.slice_step}th slice ({args.slice_step} series per scan); ' if args.slice_step > 1 else ''}"
          f"{f'cut to {args.crop_mm[0]:.0f} x {args.crop_mm[1]:.0f} mm; ' if args.crop_mm else ''}"
          f"{'no clean-up' if args.keep_all_parts else 'plausibility clean-up'}")
    print("| set | scan | body Dice | body recall | disc Dice | in front >15 mm | worst slice in front | s |")
    print("|---|---|---|---|---|---|---|---|")
    totals: dict[str, dict[str, list]] = {}
    for kind in ("vb", "ivd"):
        for image in sorted((args.data / kind / "images").glob("*.mha")):
            volume, mask = read_sitk_image(image), read_sitk_image(args.data / kind / "masks" / image.name)
            if args.crop_mm:
                volume, mask = crop_around_labels(volume, mask, tuple(args.crop_mm))
            started = time.perf_counter()  # a cut series is timed from the cut, a whole scan from its file
            series = []
            for phase in range(args.slice_step):
                reference = sitk.GetArrayFromImage(every_nth_slice(mask, args.slice_step, phase))
                if args.slice_step == 1 and not args.crop_mm:  # the file itself: the seconds include reading it
                    scan = image
                else:
                    cut = every_nth_slice(volume, args.slice_step, phase)
                    scan = (sitk.GetArrayFromImage(cut), Geometry.from_sitk(cut))
                result = segment(scan, segmenter=segmenter, volume=args.volume, keep_all_parts=args.keep_all_parts)
                series.append(_score_scan(result, reference, kind))
            seconds = (time.perf_counter() - started) / args.slice_step
            scores = {key: _mean_or_none([s[key] for s in series]) for key in series[0] if key != "slice"}
            scores["slice"] = series[0]["slice"]
            for key in ("far_in_front", "worst_far_in_front"):
                scores[key] = max((s[key] for s in series if s[key] is not None), default=None)
            for key, value in scores.items():
                totals.setdefault(kind, {}).setdefault(key, []).append(value)

            def cell(key: str, scores=scores) -> str:
                value = scores.get(key)
                return "" if value is None else f"{value:.3f}"

            print(f"| {kind} | {image.stem} | {cell('body_dice')} | {cell('body_recall')} | {cell('disc_dice')} | "
                  f"{cell('far_in_front')} | {cell('worst_far_in_front')} | {seconds:.1f} |")
    for kind, values in totals.items():
        print(f"| {kind} | mean of {len(values['slice'])} | {_mean(values.get('body_dice', []))} | "
              f"{_mean(values.get('body_recall', []))} | {_mean(values.get('disc_dice', []))} | "
              f"{_mean(values['far_in_front'])} | {_mean(values['worst_far_in_front'])} | |")


if __name__ == "__main__":
    main()
