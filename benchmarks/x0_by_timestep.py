"""How well each diffusion model recovers the mask from one noisy input, timestep by timestep.

For every held-out slice of the runs' test fold, the ground-truth mask (in [-1, 1]) is noised to ``t`` with
fixed noise, the network is called once, and its ``x0`` estimate (SpineSegDiff: ``2 sigmoid(logits) - 1``;
IISDM: ``(x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)``) is thresholded at 0. The table prints the mean
Dice over SC, VB and IVD at each ``t``. Sampling from noise starts at ``t = 999``, so a model that only
recovers the mask at small ``t`` cannot segment from noise in a few DDIM steps, however low its training loss.

With ``--trajectory N`` each run also walks N deterministic DDIM steps from pure noise on the same slices and
prints, step by step, the mean of its ``x0`` estimate (the masks' own mean is about -0.9: mostly background),
the share of pixels it puts in a structure and its Dice: a model that ignores the image keeps ``x0`` near 0
(white noise in, white noise out) or loses the prior on the way down.

    python benchmarks/x0_by_timestep.py --run runs/compact-fold0 --run runs/iisdm-fold0 [--threads 2]
    python benchmarks/x0_by_timestep.py --run runs/iisdm-skip-fold0/last.pt --trajectory 10
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from spinesegdiff.data.folds import run_held_out_slices
from spinesegdiff.diffusion import DDIMScheduler, add_noise
from spinesegdiff.models import model_prediction_type
from spinesegdiff.models.checkpoint import checkpoint_scheduler, load_model, resolve_model_file
from spinesegdiff.pipelines.sampling import logits_to_x0
from spinesegdiff.training.loop import batch_tensors, one_hot_x0

TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def x0_dice_by_timestep(run: str, timesteps: tuple[int, ...] = TIMESTEPS, seed: int = 0) -> dict[int, float]:
    """``{t: mean Dice of (x0_hat > 0) against the truth over slices and the three structures}``."""
    model_file = resolve_model_file(run)
    net, model_config, payload = load_model(model_file, map_location="cpu")
    net.eval()
    _, cache, test = run_held_out_slices(payload["train_config"], run)
    prediction_type = model_prediction_type(model_config)
    scheduler = DDIMScheduler(checkpoint_scheduler(payload, model_file).noise_schedule(),
                              prediction_type=prediction_type)
    image, labels = batch_tensors(cache, test, torch.device("cpu"))
    truth = one_hot_x0(labels) > 0.5
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(seed))
    scores = {}
    with torch.inference_mode():
        for t in timesteps:
            steps = torch.full((len(test),), t)
            x_t = add_noise(truth.float() * 2 - 1, noise, steps, scheduler.schedule)
            output = torch.cat([net(x_t[i:i + 1], steps[i:i + 1], image=image[i:i + 1] * 2 - 1)
                                for i in range(len(test))])
            if prediction_type == "sample":
                x0 = logits_to_x0(output)
            else:
                alpha_bar = scheduler.schedule.alphas_cumprod[t]
                x0 = (x_t - (1 - alpha_bar) ** 0.5 * output) / alpha_bar**0.5
            scores[t] = _mean_dice(x0 > 0, truth)
    return scores


def _mean_dice(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean Dice over slices and channels of ``(N, 3, H, W)`` boolean maps (1 where both are empty)."""
    overlap = (predicted & truth).sum(dim=(2, 3)).float()
    sizes = predicted.sum(dim=(2, 3)).float() + truth.sum(dim=(2, 3)).float()
    return float(torch.where(sizes > 0, 2 * overlap / sizes.clamp_min(1), 1.0).mean())


def x0_along_trajectory(run: str, num_steps: int, seed: int = 0) -> list[tuple[int, float, float, float]]:
    """``[(t, mean x0, share of x0 > 0, Dice of x0 > 0)]`` along a deterministic DDIM walk from pure noise."""
    model_file = resolve_model_file(run)
    net, model_config, payload = load_model(model_file, map_location="cpu")
    net.eval()
    _, cache, test = run_held_out_slices(payload["train_config"], run)
    prediction_type = model_prediction_type(model_config)
    scheduler = DDIMScheduler(checkpoint_scheduler(payload, model_file).noise_schedule(),
                              prediction_type=prediction_type)
    scheduler.set_timesteps(num_steps)
    image, labels = batch_tensors(cache, test, torch.device("cpu"))
    truth = one_hot_x0(labels) > 0.5
    x = torch.randn(truth.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    with torch.inference_mode():
        for t in scheduler.timesteps.tolist():
            steps = torch.full((len(test),), t)
            output = net(x, steps, image=image * 2 - 1)
            step = scheduler.step(logits_to_x0(output) if prediction_type == "sample" else output, t, x)
            x0 = step.pred_original_sample
            rows.append((t, float(x0.mean()), float((x0 > 0).float().mean()), _mean_dice(x0 > 0, truth)))
            x = step.prev_sample
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="run folder or checkpoint (repeat)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trajectory", type=int, default=0, metavar="N",
                        help="also walk N DDIM steps from pure noise and print x0 step by step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {run: x0_dice_by_timestep(run) for run in args.run}
    print("mean Dice (SC, VB, IVD) of the one-call x0 estimate from the truth noised to t, held-out slices")
    print("| run | " + " | ".join(f"t={t}" for t in TIMESTEPS) + " |")
    print("|---|" + "---|" * len(TIMESTEPS))
    for run, scores in results.items():
        print(f"| {run} | " + " | ".join(f"{scores[t]:.3f}" for t in TIMESTEPS) + " |")
    for run in args.run if args.trajectory else ():
        print(f"\n{run}: x0 along {args.trajectory} deterministic DDIM steps from pure noise, held-out slices")
        print("| t | mean x0 | share x0 > 0 | Dice |\n|---|---|---|---|")
        for t, mean, share, dice in x0_along_trajectory(run, args.trajectory):
            print(f"| {t} | {mean:.3f} | {share:.3f} | {dice:.3f} |")
    print(f"(numpy {np.__version__}, torch {torch.__version__}, {args.threads} threads)")


if __name__ == "__main__":
    main()
