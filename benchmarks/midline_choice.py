"""Does the anatomy-based slice choice find the mid-sagittal slice? Checked against the reference masks.

For each scan the candidate slices are presegmented by the shipped U-Net and scored
(:mod:`spinesegdiff.pipelines.midline`); the same score computed on the reference mask gives the reference's own
mid-sagittal slice. Prints, per data set, how often the choice equals the reference's slice (or lies within one
slice of it), how often the plain central slice does, and the reference score of the chosen slice relative to
the best one. For the external data (partial labels) the reference slice is ``midline_slice`` of its
``index.json`` (the slice with the most labelled pixels).

    python benchmarks/midline_choice.py [--spider SPIDER_FOLDER] [--external EXTERNAL_FOLDER]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spinesegdiff.data.io import read_image
from spinesegdiff.data.labels import to_classes
from spinesegdiff.data.preprocess import plan_grid, prepare_scan
from spinesegdiff.pipelines.midline import POSTERIOR_WEIGHT, candidate_slices, choose_slice, midline_score
from spinesegdiff.pipelines.presegmenters import load_presegmenter
from spinesegdiff.pipelines.tiling import presegment_canvas


def _reference_best(classes: np.ndarray, candidates: list[int]) -> tuple[int, dict[int, float]]:
    scores = {}
    for index, labels in zip(candidates, classes, strict=True):
        canal, posterior = midline_score(labels)
        scores[index] = canal + POSTERIOR_WEIGHT * posterior
    return max(scores, key=lambda k: scores[k]), scores


def _report(name: str, rows: list[tuple[int, int, int, float]]) -> None:
    chosen = np.array([r[0] for r in rows])
    truth = np.array([r[1] for r in rows])
    central = np.array([r[2] for r in rows])
    print(f"| {name} | {len(rows)} | {np.mean(chosen == truth):.0%} | {np.mean(abs(chosen - truth) <= 1):.0%} | "
          f"{np.mean(central == truth):.0%} | {np.mean(abs(central - truth) <= 1):.0%} | "
          f"{np.mean([r[3] for r in rows]):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spider", type=Path, default=Path("../shared/data/spider-t2space"))
    parser.add_argument("--external", type=Path, default=Path("../shared/data/external-t2-2d"))
    args = parser.parse_args()
    unet = load_presegmenter("unet")
    print("| data | scans | choice = reference | within 1 slice | centre = reference | centre within 1 | "
          "reference score of the choice / best |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for image in sorted((args.spider / "images").glob("*.mha")):
        array, geometry = read_image(image)
        mask, _ = read_image(args.spider / "masks" / image.name)
        grid = plan_grid(array.shape, geometry)
        candidates = list(range(grid.num_sagittal))  # every slice, to find the reference's best
        prepared = prepare_scan(array, geometry, classes_zyx=to_classes(mask), slices=candidates)
        searched = candidate_slices(grid)
        labels = unet(prepared.images[searched]).argmax(axis=1)
        choice = choose_slice(searched, labels, grid.central_index)
        best, scores = _reference_best(prepared.labels, candidates)
        rows.append((choice.index, best, grid.central_index, scores[choice.index] / max(scores[best], 1e-6)))
    _report("SPIDER t2 SPACE (9 slices, 1 mm)", rows)
    index = json.loads((args.external / "index.json").read_text())
    for kind in ("vb", "ivd"):
        rows = []
        for image in sorted((args.external / kind / "images").glob("*.mha")):
            array, geometry = read_image(image)
            grid = plan_grid(array.shape, geometry)
            searched = candidate_slices(grid)
            prepared = prepare_scan(array, geometry, slices=searched, cover_field_of_view=True)  # as predict does
            labels = presegment_canvas(unet, prepared.images).argmax(axis=1)
            choice = choose_slice(searched, labels, grid.central_index)
            truth = index[kind][image.stem]["midline_slice"]
            rows.append((choice.index, truth, grid.central_index, float("nan")))
        _report(f"external {kind} (21 slices, 1 mm)", rows)


if __name__ == "__main__":
    main()
