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
from dataclasses import dataclass

import numpy as np
import torch

from spinesegdiff.data.folds import run_held_out_slices
from spinesegdiff.diffusion import DDIMScheduler, add_noise
from spinesegdiff.models import model_prediction_type
from spinesegdiff.models.checkpoint import checkpoint_scheduler, load_model, resolve_model_file
from spinesegdiff.pipelines.sampling import logits_to_x0
from spinesegdiff.training.loop import batch_tensors, one_hot_x0

TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)
IMAGE_USE_TIMESTEPS = (300, 500, 700, 800, 900)


@dataclass
class _HeldOut:
    """A run's network on its own held-out slices: images ``(N, 1, H, W)`` in [-1, 1], truth ``(N, 3, H, W)``."""

    net: torch.nn.Module
    prediction_type: str
    scheduler: DDIMScheduler
    image: torch.Tensor
    truth: torch.Tensor

    @classmethod
    def load(cls, run: str) -> _HeldOut:
        model_file = resolve_model_file(run)
        net, model_config, payload = load_model(model_file, map_location="cpu")
        _, cache, test = run_held_out_slices(payload["train_config"], run)
        prediction_type = model_prediction_type(model_config)
        scheduler = DDIMScheduler(checkpoint_scheduler(payload, model_file).noise_schedule(),
                                  prediction_type=prediction_type)
        image, labels = batch_tensors(cache, test, torch.device("cpu"))
        return cls(net.eval(), prediction_type, scheduler, image * 2 - 1, one_hot_x0(labels) > 0.5)

    def model_output(self, x_t: torch.Tensor, t: int, image: torch.Tensor) -> torch.Tensor:
        """What the scheduler's step takes at ``t`` for every slice (an ``x0`` in [-1, 1] or the predicted
        noise), one slice per network call."""
        steps = torch.full((1,), t)
        output = torch.cat([self.net(x_t[i:i + 1], steps, image=image[i:i + 1]) for i in range(len(x_t))])
        return logits_to_x0(output) if self.prediction_type == "sample" else output

    def x0(self, x_t: torch.Tensor, t: int, image: torch.Tensor) -> torch.Tensor:
        """The one-call ``x0`` estimate of every slice at step ``t`` (not clipped)."""
        output = self.model_output(x_t, t, image)
        if self.prediction_type == "sample":
            return output
        alpha_bar = self.scheduler.schedule.alphas_cumprod[t]
        return (x_t - (1 - alpha_bar) ** 0.5 * output) / alpha_bar**0.5

    def noised(self, mask: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
        """``mask`` (in [-1, 1]) noised to ``t`` with ``noise``."""
        return add_noise(mask, noise, torch.full((len(mask),), t), self.scheduler.schedule)


def _mean_dice(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean Dice over slices and channels of ``(N, 3, H, W)`` boolean maps (1 where both are empty)."""
    overlap = (predicted & truth).sum(dim=(2, 3)).float()
    sizes = predicted.sum(dim=(2, 3)).float() + truth.sum(dim=(2, 3)).float()
    return float(torch.where(sizes > 0, 2 * overlap / sizes.clamp_min(1), 1.0).mean())


def x0_dice_by_timestep(run: str, timesteps: tuple[int, ...] = TIMESTEPS, seed: int = 0) -> dict[int, float]:
    """``{t: mean Dice of (x0_hat > 0) against the truth over slices and the three structures}``."""
    held_out = _HeldOut.load(run)
    truth = held_out.truth
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return {t: _mean_dice(held_out.x0(held_out.noised(truth.float() * 2 - 1, noise, t), t, held_out.image) > 0,
                              truth) for t in timesteps}


def image_use(run: str, timesteps: tuple[int, ...] = IMAGE_USE_TIMESTEPS,
              seed: int = 0) -> dict[int, tuple[float, float, float]]:
    """``{t: (Dice from the truth noised with the image, the same with a blank image, from an all-background
    mask noised with the image)}``: a model that reads the image keeps the third high at large ``t``; one that
    only reads ``x_t`` scores the first two alike and the third near 0."""
    held_out = _HeldOut.load(run)
    truth, image = held_out.truth, held_out.image
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(seed))
    scores = {}
    with torch.inference_mode():
        for t in timesteps:
            from_truth = held_out.noised(truth.float() * 2 - 1, noise, t)
            from_background = held_out.noised(-torch.ones_like(noise), noise, t)
            scores[t] = (_mean_dice(held_out.x0(from_truth, t, image) > 0, truth),
                         _mean_dice(held_out.x0(from_truth, t, torch.zeros_like(image)) > 0, truth),
                         _mean_dice(held_out.x0(from_background, t, image) > 0, truth))
    return scores


def x0_along_trajectory(run: str, num_steps: int, seed: int = 0) -> list[tuple[int, float, float, float]]:
    """``[(t, mean x0, share of x0 > 0, Dice of x0 > 0)]`` along a deterministic DDIM walk from pure noise."""
    held_out = _HeldOut.load(run)
    scheduler = held_out.scheduler
    scheduler.set_timesteps(num_steps)
    x = torch.randn(held_out.truth.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    with torch.inference_mode():
        for t in scheduler.timesteps.tolist():
            step = scheduler.step(held_out.model_output(x, t, held_out.image), t, x)
            x0 = step.pred_original_sample  # clipped to [-1, 1], as the sampler uses it
            rows.append((t, float(x0.mean()), float((x0 > 0).float().mean()), _mean_dice(x0 > 0, held_out.truth)))
            x = step.prev_sample
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help="run folder or checkpoint (repeat)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-use", action="store_true",
                        help="also score x0 with a blank image and from an all-background mask")
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
    for run in args.run if args.image_use else ():
        print(f"\n{run}: does the network read the image? one-call x0 Dice, held-out slices")
        print("| t | truth noised, image | truth noised, blank image | background noised, image |\n|---|---|---|---|")
        for t, (with_image, blank, background) in image_use(run).items():
            print(f"| {t} | {with_image:.3f} | {blank:.3f} | {background:.3f} |")
    for run in args.run if args.trajectory else ():
        print(f"\n{run}: x0 along {args.trajectory} deterministic DDIM steps from pure noise, held-out slices")
        print("| t | mean x0 | share x0 > 0 | Dice |\n|---|---|---|---|")
        for t, mean, share, dice in x0_along_trajectory(run, args.trajectory):
            print(f"| {t} | {mean:.3f} | {share:.3f} | {dice:.3f} |")
    print(f"(numpy {np.__version__}, torch {torch.__version__}, {args.threads} threads)")


if __name__ == "__main__":
    main()
