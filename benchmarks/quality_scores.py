"""The shipped pipeline's quality score on whole folders of scans: its range per data set and who is flagged.

Runs ``segment`` (defaults: the shipped U-Net and refiner, the slice chosen by anatomy, the clean-up) on every
scan of each folder and prints the score's minimum, 5th percentile, median and maximum, and the scans flagged
``out_of_distribution`` (:mod:`spinesegdiff.pipelines.quality_score`). On the shared SPIDER scans the shipped
models were trained (in-sample: the scores are optimistic); the external 2D T2 scans were never trained on.

    python benchmarks/quality_scores.py ../shared/data/spider-t2space/images ../shared/data/external-t2-2d/vb/images
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from spinesegdiff.pipelines.checks import QualityWarning
from spinesegdiff.pipelines.predict import segment
from spinesegdiff.pipelines.presegmenters import resolve_presegmenter
from spinesegdiff.pipelines.segmenter import Segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    presegmenter = resolve_presegmenter(None, user_model=False, device="cpu")
    segmenter = Segmenter.from_checkpoint(None, device="cpu", quiet=True, presegmenter=presegmenter)
    print("| folder | scans | min | 5th pct | median | max | flagged out of distribution |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.folders:
        scores, flagged = [], []
        for image in sorted(folder.glob("*.mha")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", QualityWarning)
                quality = segment(image, segmenter=segmenter).quality
            scores.append(quality["score"])
            if quality["out_of_distribution"]:
                flagged.append(f"{image.stem} ({quality['score']:.2f})")
        values = np.asarray(scores)
        print(f"| {folder} | {len(values)} | {values.min():.3f} | {np.percentile(values, 5):.3f} | "
              f"{np.median(values):.3f} | {values.max():.3f} | {', '.join(flagged) or 'none'} |")


if __name__ == "__main__":
    main()
