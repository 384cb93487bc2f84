"""The shipped pipeline on single sagittal slices away from the midline (issue 13: "slice positions").

Users often hand over one slice, and not always the mid-sagittal one. Each scan of
``../shared/data/external-t2-2d`` holds 21 slices at 1 mm around its midline (``index.json``); this cuts single
slices at the given offsets, segments each as a one-slice scan of its own (nothing from the neighbours, no
mid-sagittal choice, exactly what ``predict`` does with a one-slice file) and scores it against that slice's own
reference as :mod:`spinesegdiff.evaluation.partial_labels` says (body Dice within 3 mm of the reference bodies,
disc Dice within the labelled discs' rows, share of predicted pixels more than 15 mm in front of the spine).
The rows are grouped by the distance from the midline, so the fall-off with it is the point. The scans are for
evaluation only; no model here was trained on them.

    python benchmarks/off_midline.py [--offsets -9 -6 -3 0 3 6 9] [--model M --preseg-model U]
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
    parser.add_argument("--offsets", type=int, nargs="+", default=[-9, -6, -3, 0, 3, 6, 9],
                        help="slice offsets from the midline in slices (1 mm each); + is one way, - the other")
    parser.add_argument("--model", help="a diffusion model (default: the shipped refiner with the shipped U-Net)")
    parser.add_argument("--preseg", default=None, help="none, unet or nnunet (as predict's --preseg)")
    parser.add_argument("--preseg-model", help="the presegmenter's model (a U-Net run or checkpoint)")
    args = parser.parse_args()
    from spinesegdiff.pipelines.presegmenters import resolve_presegmenter

    presegmenter = resolve_presegmenter(args.preseg, args.preseg_model, user_model=args.model is not None, device="cpu")
    segmenter = Segmenter.from_checkpoint(args.model, device="cpu", quiet=True, presegmenter=presegmenter,
                                          settings=SamplerSettings())
    index = json.loads((args.data / "index.json").read_text(encoding="utf-8"))
    print(f"{segmenter.model_name}; {platform.processor() or platform.machine()}; one-slice scans")
    table: dict[tuple[str, int], dict[str, list[float]]] = {}
    started = time.perf_counter()
    for kind in ("vb", "ivd"):
        for path in sorted((args.data / kind / "images").glob("*.mha")):
            image, mask = read_sitk_image(path), read_sitk_image(args.data / kind / "masks" / path.name)
            axis = sagittal_axis(image)
            midline = index[kind][path.name.removesuffix(".mha")]["midline_slice"]
            for offset in args.offsets:
                if not 0 <= midline + offset < image.GetSize()[axis]:
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
                for key, value in scores.items():
                    if value is not None:
                        table.setdefault((kind, abs(offset)), {}).setdefault(key, []).append(value)
    print(f"{time.perf_counter() - started:.0f} s in all")
    print("| set | mm from midline | slices | body Dice | body recall | disc Dice | in front >15 mm (mean / max) "
          "| refused |")
    print("|---|---|---|---|---|---|---|---|")
    for (kind, distance), values in sorted(table.items()):
        def cell(key: str, values=values) -> str:
            kept = values.get(key, [])
            return f"{np.mean(kept):.3f}" if kept else ""

        front = values.get("far_in_front", [])
        front_cell = f"{np.mean(front):.3f} / {np.max(front):.3f}" if front else ""
        print(f"| {kind} | {distance} | {len(values['refused'])} | {cell('body_dice')} | {cell('body_recall')} | "
              f"{cell('disc_dice')} | {front_cell} | {int(sum(values['refused']))} |")


if __name__ == "__main__":
    main()
