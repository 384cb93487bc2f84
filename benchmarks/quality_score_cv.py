"""The plausibility clean-up and the quality score on cross-validated held-out slices (issue 13).

Each of the 33 SPIDER patients is segmented (central slice) by the U-Net of the fold that held it out
(``runs/unet-fold{K}``, ``configs/unet-cpu.json``: the shipped pipeline's presegmenter recipe), its uncertainty the
normalised entropy of the U-Net's class probabilities. Prints Dice per structure without and with the clean-up
(:mod:`spinesegdiff.pipelines.plausibility`; it must not lower Dice), the quality score's Spearman rank
correlation with the patient's mean Dice (:mod:`spinesegdiff.pipelines.quality_score`), and the score's range,
which sets the out-of-distribution threshold.

    python benchmarks/quality_score_cv.py --runs runs/unet-fold{fold} [--folds 0-4]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from spinesegdiff.evaluation.held_out import HeldOutSlices
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.models.checkpoint import load_checkpoint, resolve_model_file
from spinesegdiff.pipelines.backends.numpy_sampler import presegmentation_summary
from spinesegdiff.pipelines.checks import spine_quality
from spinesegdiff.pipelines.plausibility import plausible_probabilities
from spinesegdiff.pipelines.presegmenters import load_presegmenter
from spinesegdiff.pipelines.quality_score import quality_score


def held_out_rows(run: str) -> list[dict]:
    """Per held-out slice of ``run``: Dice before and after the clean-up, the score and its factors."""
    payload = load_checkpoint(resolve_model_file(run), map_location="cpu")
    held_out = HeldOutSlices.of_run(payload["train_config"], run)
    unet = load_presegmenter("unet", run, device="cpu")
    probabilities = unet(held_out.images())
    raw = presegmentation_summary(probabilities)
    rows = []
    for k, case in enumerate(held_out.cases):  # each slice on its own: the slices are different patients', and
        # a stack of one scan's slices is a volume to the clean-up (its rule 4 bounds them by one slice's column)
        _, kept, cleanup = plausible_probabilities(raw.class_probabilities[k:k + 1], raw.labels[k:k + 1])
        removed = cleanup.per_slice_mm2[0]
        truth = held_out.truth(k)
        verdict = spine_quality(kept[0])["verdict"]
        scored = quality_score(kept[0], raw.uncertainty[k], removed_mm2=removed,
                               verdict="doubtful" if verdict == "implausible" else verdict)
        rows.append({"case": case, "fold": held_out.fold, "dice_raw": dice_per_class(raw.labels[k], truth),
                     "dice_clean": dice_per_class(kept[0], truth), "removed_mm2": removed,
                     "verdict": verdict, **scored})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/unet-fold{fold}", help="run folder pattern with {fold}")
    parser.add_argument("--folds", default="0-4")
    args = parser.parse_args()
    first, _, last = args.folds.partition("-")
    rows = [row for fold in range(int(first), int(last or first) + 1)
            for row in held_out_rows(args.runs.format(fold=fold))]
    raw = np.array([r["dice_raw"] for r in rows])
    clean = np.array([r["dice_clean"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    print(f"{len(rows)} held-out central slices (U-Net of the fold that held each patient out)")
    print("| | SC | VB | IVD | mDice |")
    print("|---|---|---|---|---|")
    for name, values in (("without clean-up", raw), ("with clean-up", clean)):
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values.mean(axis=0)) + f" | {values.mean():.4f} |")
    changed = [r for r in rows if r["removed_mm2"] > 0]
    largest = max(r["removed_mm2"] for r in rows)
    print(f"clean-up removed something on {len(changed)} slices; largest {largest:.0f} mm^2; worst per-slice "
          f"mDice change {min((clean - raw).mean(axis=1)):+.4f}")
    rho, p = stats.spearmanr(scores, clean.mean(axis=1))
    rho_u, p_u = stats.spearmanr([-r["band_uncertainty"] for r in rows], clean.mean(axis=1))
    print(f"quality score vs mDice: Spearman {rho:.3f} (p = {p:.2g}); band uncertainty alone: {rho_u:.3f} "
          f"(p = {p_u:.2g})")
    print(f"score: min {scores.min():.3f}, 5th percentile {np.percentile(scores, 5):.3f}, median "
          f"{np.median(scores):.3f}, max {scores.max():.3f}; verdicts: "
          f"{ {v: sum(r['verdict'] == v for r in rows) for v in ('ok', 'doubtful', 'implausible')} }")
    worst = sorted(rows, key=lambda r: r["score"])[:5]
    print("lowest scores: " + ", ".join(f"{r['case']} {r['score']:.3f} (mDice {r['dice_clean'].mean():.3f})"
                                          for r in worst))


if __name__ == "__main__":
    main()
