"""Cache the mid-sagittal slices the level validation measures, so candidate measures can be compared quickly.

For each graded SPIDER patient (``--data``, ``--metadata``) it stores, for the central sagittal slice and its
``--side`` neighbours on either side: the reference mask's classes, the image, and the classes and entropy
heatmap of the U-Net of the fold that held the patient out (``--runs 'runs/unet-fold{fold}'``), exactly as
:func:`spinesegdiff.evaluation.levels.unet_slice` computes them for the central slice.

    OMP_NUM_THREADS=1 python benchmarks/levels_cache.py --data ../shared/data/spider-t2space \\
        --metadata ../shared/data/spider-metadata --runs 'runs/unet-fold{fold}' --out cache/levels-slices
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--out", type=Path, default=Path("cache/levels-slices"))
    parser.add_argument("--side", type=int, default=2, help="neighbouring slices on either side (default 2)")
    args = parser.parse_args()

    import torch

    from spinesegdiff.data.io import read_image
    from spinesegdiff.data.labels import to_classes
    from spinesegdiff.data.preprocess import native_slice, plan_grid, prepare_scan, restore_probabilities
    from spinesegdiff.data.spider import find_cases
    from spinesegdiff.evaluation.levels import _fold_of_patients, read_gradings
    from spinesegdiff.pipelines.presegmenters import UNetPresegmenter

    torch.set_num_threads(1)
    gradings = read_gradings(args.metadata / "radiological_gradings.csv")
    cases = [c for c in find_cases(args.data, contrast_set="T2w") if c.patient_id in gradings]
    held = _fold_of_patients(args.runs, range(5))
    args.out.mkdir(parents=True, exist_ok=True)
    for fold in sorted(set(held.values())):
        unet = UNetPresegmenter.from_checkpoint(args.runs.replace("{fold}", str(fold)), device="cpu")
        for case in cases:
            if held.get(case.patient_id) != fold:
                continue
            target = args.out / f"{case.patient_id}.npz"
            if target.exists():
                continue
            started = time.perf_counter()
            image, geometry = read_image(case.image_path)
            mask, _ = read_image(case.mask_path)
            classes = to_classes(mask, source=case.mask_path)
            grid = plan_grid(image.shape, geometry)
            centre = grid.central_index
            indices = [k for k in range(centre - args.side, centre + args.side + 1) if 0 <= k < grid.num_sagittal]
            prepared = prepare_scan(image, geometry, slices=indices, source=case.image_path)
            probabilities = unet(prepared.images)
            unet_labels, entropies = [], []
            for probs in probabilities:
                restored = np.clip(restore_probabilities(probs, grid), 1e-8, 1.0)
                restored /= restored.sum(axis=0, keepdims=True)
                entropy = -(restored * np.log(restored)).sum(axis=0) / np.log(len(restored))
                unet_labels.append(restored.argmax(axis=0).astype(np.uint8))
                entropies.append(entropy.astype(np.float16))
            np.savez_compressed(
                target, indices=np.array(indices), centre=centre, fold=fold,
                row_mm=grid.rows.native_spacing, col_mm=grid.cols.native_spacing,
                reference=np.stack([native_slice(classes, grid, k) for k in indices]).astype(np.uint8),
                image=np.stack([native_slice(image, grid, k) for k in indices]).astype(np.float32),
                unet=np.stack(unet_labels), entropy=np.stack(entropies))
            print(f"{case.patient_id}: fold {fold}, slices {indices}, {time.perf_counter() - started:.1f} s",
                  flush=True)


if __name__ == "__main__":
    main()
