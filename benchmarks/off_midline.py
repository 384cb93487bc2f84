"""The shipped pipeline on single sagittal slices away from the midline (issue 13: "slice positions").

Users often hand over one slice, and not always the mid-sagittal one. Each scan of
``../shared/data/external-t2-2d`` holds 21 slices at 1 mm; this cuts single slices out of it, segments each as a
one-slice scan of its own (nothing from the neighbours, no mid-sagittal choice, exactly what ``predict`` does
with a one-slice file) and scores it against that slice's own reference as
:mod:`spinesegdiff.evaluation.partial_labels` says (body Dice within 3 mm of the reference bodies, disc Dice
within the labelled discs' rows, share of predicted pixels more than 15 mm in front of the spine). The rows
group the slices by their distance from the midline, so the fall-off with it is the point.

The midline (``--around``) is either the slice ``predict`` chooses on the whole scan by anatomy (the widest
canal and the spinous processes; the default) or the folder's ``midline_slice`` (``index.json``: the slice
with the most labelled pixels, which on these scans often shows the pedicles, 8-10 mm from the anatomical
midline). The scans are for evaluation only; no model here was trained on them.

    python benchmarks/off_midline.py [--around anatomy|folder] [--offsets -9 0 9] [--bin-mm 3]
        [--model M --preseg-model U]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from sagittal_cuts import one_slice, sagittal_axis

from spinesegdiff.data.io import read_sitk_image
from spinesegdiff.data.preprocess import native_slice
from spinesegdiff.evaluation.partial_labels import body_scores, disc_scores, far_in_front_fraction
from spinesegdiff.pipelines.predict import segment
from spinesegdiff.pipelines.segmenter import Segmenter
from spinesegdiff.pipelines.settings import SamplerSettings


def _score(result, reference_zyx: np.ndarray, kind: str) -> dict[str, float | None]:
    grid = result.prepared.grid
    spacing = (grid.rows.native_spacing, grid.cols.native_spacing)
    labels, truth = native_slice(result.labels, grid, 0), native_slice(reference_zyx, grid, 0)
    if not truth.any():
        return {}
    scores = body_scores(labels, truth, spacing) if kind == "vb" else disc_scores(labels, truth, spacing)
    scores["far_in_front"] = far_in_front_fraction(labels, truth > 0, spacing)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/external-t2-2d"))
    parser.add_argument("--around", choices=("anatomy", "folder"), default="anatomy",
                        help="the midline: predict's choice on the whole scan, or index.json's midline_slice")
    parser.add_argument("--offsets", type=int, nargs="+",
                        help="slice offsets from the midline (1 mm each; default: every slice of the scan)")
    parser.add_argument("--bin-mm", type=int, default=3, help="rows group distances in bins this wide")
    parser.add_argument("--worst", type=int, default=5, help="list this many slices with the lowest Dice")
    parser.add_argument("--model", help="a diffusion model (default: the shipped refiner with the shipped U-Net)")
    parser.add_argument("--preseg", default=None, help="none, unet or nnunet (as predict's --preseg)")
    parser.add_argument("--preseg-model", help="the presegmenter's model (a U-Net run or checkpoint)")
    args = parser.parse_args()
    from spinesegdiff.pipelines.presegmenters import resolve_presegmenter

    presegmenter = resolve_presegmenter(args.preseg, args.preseg_model, user_model=args.model is not None, device="cpu")
    segmenter = Segmenter.from_checkpoint(args.model, device="cpu", quiet=True, presegmenter=presegmenter,
                                          settings=SamplerSettings())
    index = json.loads((args.data / "index.json").read_text(encoding="utf-8"))
    around = "predict's choice by anatomy" if args.around == "anatomy" else "index.json"
    print(f"{segmenter.model_name}; {platform.processor() or platform.machine()}; one-slice scans; midline: {around}")
    table: dict[tuple[str, int], dict[str, list[float]]] = {}
    slices_scored: list[tuple[float, str, int]] = []
    started = time.perf_counter()
    for kind in ("vb", "ivd"):
        for path in sorted((args.data / kind / "images").glob("*.mha")):
            image, mask = read_sitk_image(path), read_sitk_image(args.data / kind / "masks" / path.name)
            slices = image.GetSize()[sagittal_axis(image)]
            if args.around == "folder":
                midline = index[kind][path.name.removesuffix(".mha")]["midline_slice"]
            else:
                midline = segment(path, segmenter=segmenter).prepared.indices[0]
            offsets = args.offsets if args.offsets else [k - midline for k in range(slices)]
            for offset in offsets:
                if not 0 <= midline + offset < slices:
                    continue
                scan = one_slice(image, midline + offset)
                reference, _ = one_slice(mask, midline + offset)
                try:
                    result = segment(scan, segmenter=segmenter)
                except Exception as err:  # a refused slice is a result here, not a crash
                    print(f"  {path.stem} offset {offset:+d}: refused ({type(err).__name__}: {err})")
                    scores = {"refused": 1.0}
                else:
                    scores = _score(result, reference, kind)
                    scores["refused"] = 0.0
                    if (scores.get("far_in_front") or 0.0) > 0.01:
                        print(f"  {path.stem} offset {offset:+d}: {scores['far_in_front']:.1%} of the predicted "
                              "pixels more than 15 mm in front of the spine")
                dice = scores.get("body_dice", scores.get("disc_dice"))
                if dice is not None:
                    slices_scored.append((dice, path.stem, offset))
                for key, value in scores.items():
                    if value is not None:
                        distance = abs(offset) // args.bin_mm * args.bin_mm
                        table.setdefault((kind, distance), {}).setdefault(key, []).append(value)
    print(f"{time.perf_counter() - started:.0f} s in all")
    worst = ", ".join(f"{name} {offset:+d} mm {dice:.3f}" for dice, name, offset in sorted(slices_scored)[:args.worst])
    print(f"lowest body or disc Dice: {worst}")
    print("| set | mm from midline | slices | body Dice | body recall | disc Dice | in front >15 mm (mean / max) "
          "| refused |")
    print("|---|---|---|---|---|---|---|---|")
    for (kind, distance), values in sorted(table.items()):
        def cell(key: str, values=values) -> str:
            kept = values.get(key, [])
            return f"{np.mean(kept):.3f}" if kept else ""

        front = values.get("far_in_front", [])
        front_cell = f"{np.mean(front):.3f} / {np.max(front):.3f}" if front else ""
        span = f"{distance}" if args.bin_mm == 1 else f"{distance}-{distance + args.bin_mm - 1}"
        print(f"| {kind} | {span} | {len(values['refused'])} | {cell('body_dice')} | {cell('body_recall')} | "
              f"{cell('disc_dice')} | {front_cell} | {int(sum(values['refused']))} |")


if __name__ == "__main__":
    main()
