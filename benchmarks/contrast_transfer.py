"""How a model trained on T2-weighted data reads T1-like contrast, measured on phantoms.

Our real training data (the shared SPIDER subset) is T2 only, so T1 transfer can only be measured honestly on
input whose T1 appearance we control: the phantom generator's T1 and T2 modes draw the same anatomy with
swapped tissue contrast. This prints Dice per structure on N phantom central slices in each mode (phantoms are
never used for training, so both numbers are out-of-distribution; the gap between them is the point).

    python benchmarks/contrast_transfer.py --model RUN_OR_CHECKPOINT [--cases 12] [--preseg-model UNET]
"""

from __future__ import annotations

import argparse

import numpy as np

from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.data.preprocess import prepare_scan
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--samples", type=int, help="S (default: the pipeline's, 4 refining, 15 from noise)")
    parser.add_argument("--steps", type=int, help="DDIM steps K (default: the pipeline's)")
    parser.add_argument("--preseg-model", help="a U-Net run or checkpoint: refine its mask from T_pre = 30")
    args = parser.parse_args()
    presegmenter = None
    if args.preseg_model:
        from spinesegdiff.pipelines.presegmenters import resolve_presegmenter

        presegmenter = resolve_presegmenter("unet", args.preseg_model, user_model=True, device="cpu")
    segmenter = Segmenter.from_checkpoint(args.model, device="cpu", quiet=True, presegmenter=presegmenter,
                                          settings=SamplerSettings(num_samples=args.samples, num_steps=args.steps))
    print(f"model {args.model}; presegmenter {args.preseg_model}")
    print(f"{args.cases} phantom central slices per contrast (0.47 x 0.47 mm, 9 slices)")
    print("| contrast | SC | VB | IVD | mDice |")
    print("|---|---|---|---|---|")
    for contrast in ("T2", "T1"):
        scores = []
        for seed in range(args.cases):
            phantom = make_phantom(shape=(9, 560, 480), spacing=(0.47, 0.47, 1.0), contrast=contrast,
                                   seed=1000 + seed)
            prepared = prepare_scan(phantom.image, phantom.geometry, classes_zyx=phantom.labels)
            result = segmenter.segment(prepared.images)
            scores.append(dice_per_class(result.labels[0], prepared.labels[0]))
        mean, std = np.mean(scores, axis=0), np.std(scores, axis=0)
        cells = " | ".join(f"{m:.3f} +- {s:.3f}" for m, s in zip(mean, std, strict=True))
        print(f"| phantom {contrast} | {cells} | {mean.mean():.3f} |")


if __name__ == "__main__":
    main()
