"""Training: one loop for every variant, with EMA, validation Dice, checkpoints, resume and DDP.

The loop draws a batch of cached 320 x 320 slices, augments it (simulated thick slices first, when asked
for), noises the one-hot mask ``x0 = 2 * onehot - 1`` to a random step ``t``, and trains the network to return
``x0`` (logits; loss MSE + Dice + BCE on ``sigmoid(logits)``) or, for IISDM, the noise (MSE). Every
``val_every`` epochs the EMA network segments the validation patients' central slices with the multi-sample
DDIM sampler; the best validation mean Dice is kept in ``best.pt``, the latest state in ``last.pt`` (both
resumable).

A slab network (Diff-UNet 3D, :data:`~spinesegdiff.models.config.SLAB_VARIANTS`) trains the same way on the
fold's sagittal slabs (:mod:`spinesegdiff.training.slab_batches`): images ``(B, 1, D, H, W)``, one-hot masks
``(B, 3, D, H, W)``, the same loss, and validation Dice on the slabs' central slices.

A run stopped early (``max_minutes``, ``stop_after_steps``) saves its place within the epoch and its random
states, so a resumed run continues exactly where it stopped: it ends with the weights of an uninterrupted run.

Validation patients are taken from the training folds (``val_fraction`` of the training patients, seeded),
never from the test fold. Under ``torchrun`` each process trains on its own batches (DistributedDataParallel,
NCCL on GPUs, Gloo on CPUs); only rank 0 validates and writes.

:func:`train` leaves the caller's global state alone: the initial weights are drawn from PyTorch's global
generator forked and seeded for the run, and the thread count is the caller's.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinesegdiff.diffusion import add_noise
from spinesegdiff.models.checkpoint import load_checkpoint, save_checkpoint
from spinesegdiff.pipelines.presegmenters import CrossFittedPresegmenter
from spinesegdiff.training.batches import training_batch
from spinesegdiff.training.config import TrainConfig, make_train_config
from spinesegdiff.training.losses import (
    DEFAULT_MAX_NOISE_WEIGHT,
    dice_cross_entropy_loss,
    epsilon_loss,
    min_snr_weights,
    segmentation_loss,
)
from spinesegdiff.training.lr_schedule import learning_rate
from spinesegdiff.training.setup import (
    Run,
    build_network,
    make_scheduler,
    run_presegmenter,
    set_up_run,
    stop_processes,
)
from spinesegdiff.training.slab_batches import slab_training_batch
from spinesegdiff.training.validation import batch_tensors, validate, validate_slabs

__all__ = ["TrainConfig", "batch_tensors", "make_scheduler", "make_train_config", "one_hot_x0", "train",
           "training_loss"]


def one_hot_x0(labels: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Labels ``(B, H, W)`` in {0..3} -> ``(B, 3, H, W)`` one-hot of SC, VB, IVD as ``{0, 1}`` float."""
    return torch.stack([(labels == c) for c in range(1, channels + 1)], dim=1).float()


def training_loss(net: torch.nn.Module, image: torch.Tensor, labels: torch.Tensor, *, schedule,
                  prediction_type: str, generator: torch.Generator | None = None,
                  max_timestep: int | None = None, start_mask: torch.Tensor | None = None,
                  timesteps: torch.Tensor | None = None,
                  min_snr_gamma: float | None = None, snr_floor: float | None = None,
                  max_noise_weight: float = DEFAULT_MAX_NOISE_WEIGHT) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One diffusion training loss on a batch.

    Args:
        image: ``(B, 1, H, W)`` in [-1, 1].
        labels: ``(B, H, W)`` classes.
        schedule: the :class:`~spinesegdiff.diffusion.NoiseSchedule`.
        prediction_type: ``sample`` (x0 logits, MSE + Dice + BCE) or ``epsilon`` (noise MSE).
        max_timestep: draw ``t`` from ``[0, max_timestep]`` (presegmentation training) instead of ``[0, T)``.
        start_mask: ``(B, 3, H, W)`` in [0, 1]: noise this mask (a presegmentation) instead of the ground truth.
        timesteps: ``(B,)`` steps to use instead of drawing them.
        min_snr_gamma: with ``epsilon``, weight each sample by Min-SNR-gamma (``None``: plain MSE).
        snr_floor, max_noise_weight: with ``min_snr_gamma``, the truncated-SNR floor of the noisy steps and the
            cap of their weight (:func:`~spinesegdiff.training.losses.min_snr_weights`).
    """
    target01 = one_hot_x0(labels)
    high = schedule.num_train_timesteps if max_timestep is None else max_timestep + 1
    t = timesteps if timesteps is not None else torch.randint(0, high, (image.shape[0],), generator=generator,
                                                              device=image.device)
    noise = torch.randn(target01.shape, generator=generator, device=image.device)
    source = target01 if start_mask is None else start_mask
    x_t = add_noise(source * 2 - 1, noise, t, schedule).to(image.dtype)
    output = net(x_t, t, image=image)
    if prediction_type == "epsilon":
        weights = None if min_snr_gamma is None else min_snr_weights(
            schedule.alphas_cumprod.to(t.device)[t], min_snr_gamma, snr_floor=snr_floor,
            max_weight=max_noise_weight)
        loss = epsilon_loss(output.float(), noise, weights)
        return loss, {"mse": loss.detach()}
    return segmentation_loss(output.float(), target01)


def mixed_timesteps(batch: int, share: float, chosen: tuple[int, int], otherwise: tuple[int, int],
                    generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``(batch,)`` training steps: with probability ``share`` uniform on ``[chosen[0], chosen[1])``, else on
    ``[otherwise[0], otherwise[1])``."""
    pick = torch.rand(batch, generator=generator, device=device) < share
    low = torch.where(pick, chosen[0], otherwise[0])
    span = torch.where(pick, chosen[1], otherwise[1]) - low
    return low + (torch.rand(batch, generator=generator, device=device) * span).long().clamp_max(span - 1)


def noisier_timesteps(num_train_timesteps: int, batch: int, share: float, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
    """``(batch,)`` training steps: with probability ``share`` uniform on the noisier half ``[T/2, T)``, else on
    ``[0, T)`` (``T = num_train_timesteps``)."""
    return mixed_timesteps(batch, share, (num_train_timesteps // 2, num_train_timesteps), (0, num_train_timesteps),
                           generator, device)


def _preseg_timesteps(config: TrainConfig, batch: int, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
    """Refinement training steps: uniform on ``[0, focus]`` with probability ``focus_share``, else on
    ``[0, preseg_max_timestep]``."""
    refinement = config.refinement
    return mixed_timesteps(batch, refinement.preseg_focus_share, (0, refinement.preseg_focus_timestep + 1),
                           (0, refinement.preseg_max_timestep + 1), generator, device)


def _learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    settings = config.optimisation
    return learning_rate(step, total_steps, lr=settings.lr, schedule=settings.lr_schedule,
                         warmup_steps=settings.warmup_steps)


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for target, source in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if target.is_floating_point():
            target.lerp_(source.detach(), 1.0 - decay)
        else:
            target.copy_(source)


@dataclass
class TrainState:
    """What changes as a run trains, all of it saved in its checkpoints.

    ``step_in_epoch`` and ``epoch_losses`` are the place within an epoch that a run stopped early reached, so
    that a resumed run continues with the next batch instead of repeating the epoch.
    """

    net: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    sampler_rng: np.random.Generator
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    best_metric: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def random_states(self) -> dict[str, Any]:
        states = {"torch": self.generator.get_state(), "numpy": self.sampler_rng.bit_generator.state,
                  "global": torch.get_rng_state()}
        if self.generator.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.generator.device)
        return states

    def restore(self, payload: dict[str, Any]) -> None:
        """Take up the state saved in a checkpoint (``resume``)."""
        self.net.load_state_dict(payload["model"])
        self.ema.load_state_dict(payload["ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step, self.epoch = payload["step"], payload["epoch"]
        self.step_in_epoch = payload.get("step_in_epoch", 0)
        self.epoch_losses = list(payload.get("epoch_losses", []))
        self.best_metric, self.history = payload["best_metric"], payload["history"]
        rng = payload["rng"]
        self.generator.set_state(rng["torch"].to(self.generator.get_state().device))
        self.sampler_rng.bit_generator.state = rng["numpy"]
        if "global" in rng:
            torch.set_rng_state(rng["global"].cpu())
        if "cuda" in rng and self.generator.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.generator.device)


def _initial_state(config: TrainConfig, run: Run, net: torch.nn.Module, *, resume: bool) -> TrainState:
    """Optimiser, EMA and random generators of a fresh run, or the state saved in ``last.pt`` on resume."""
    seed = config.optimisation.seed * 1000 + run.rank  # batches differ by rank
    state = TrainState(
        net=net, ema=copy.deepcopy(net).eval().requires_grad_(False),
        optimizer=torch.optim.AdamW(net.parameters(), lr=config.optimisation.lr,
                                    weight_decay=config.optimisation.weight_decay),
        generator=torch.Generator(device=run.device).manual_seed(seed), sampler_rng=np.random.default_rng(seed),
    )
    if resume:
        state.restore(load_checkpoint(run.last_path, map_location=run.device))
    return state


def save_training_checkpoint(path: Path, config: TrainConfig, run: Run, state: TrainState) -> Path:
    """A resumable checkpoint: weights, optimiser, place in the run, history, random states and configs."""
    return save_checkpoint(path, {
        "model_config": run.model_config.to_dict(), "train_config": config.to_dict(),
        "scheduler": config.scheduler.to_dict(),
        "model": state.net.state_dict(), "ema": state.ema.state_dict(), "optimizer": state.optimizer.state_dict(),
        "step": state.step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
        "epoch_losses": list(state.epoch_losses), "best_metric": state.best_metric, "history": state.history,
        "rng": state.random_states(),
    })


def _training_step(model: torch.nn.Module, state: TrainState, config: TrainConfig, run: Run, *,
                   presegmenter: CrossFittedPresegmenter | None, lr: float) -> float:
    """One optimiser step on a fresh batch of slices or slabs (augmented; presegmented for refinement); returns
    the loss."""
    settings, device = config.optimisation, run.device
    train_items = run.data.train if run.slabs is None else list(range(len(run.slabs.train)))
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    chosen = np.sort(state.sampler_rng.choice(train_items, size=settings.batch_size,
                                              replace=len(train_items) < settings.batch_size))
    if run.slabs is None:
        image, labels = training_batch(run.cache, chosen, device, config.augment, state.generator, run.neighbours)
    else:
        image, labels = slab_training_batch(run.slabs.train, chosen, device, config.augment, state.generator)
    noising: dict[str, torch.Tensor] = {}
    if presegmenter is not None:
        patients = [run.cache.entries[i].patient for i in chosen]
        noising = {"start_mask": presegmenter.probabilities(image * 2 - 1, patients)[:, 1:],
                   "timesteps": _preseg_timesteps(config, len(chosen), state.generator, device)}
    elif run.diffusion and settings.high_noise_share > 0:
        noising = {"timesteps": noisier_timesteps(run.scheduler.schedule.num_train_timesteps, len(chosen),
                                                  settings.high_noise_share, state.generator, device)}
    use_amp = config.runtime.amp and device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        if run.diffusion:
            loss, _ = training_loss(model, image * 2 - 1, labels, schedule=run.scheduler.schedule,
                                    prediction_type=run.scheduler.prediction_type, generator=state.generator,
                                    min_snr_gamma=settings.min_snr_gamma, snr_floor=settings.snr_floor,
                                    max_noise_weight=settings.max_noise_weight, **noising)
        else:
            loss, _ = dice_cross_entropy_loss(model(image * 2 - 1).float(), labels)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if settings.grad_clip:
        torch.nn.utils.clip_grad_norm_(state.net.parameters(), settings.grad_clip)
    state.optimizer.step()
    _update_ema(state.ema, state.net, min(settings.ema_decay, (1 + state.step) / (10 + state.step)))
    return float(loss.detach())


def _end_of_epoch(config: TrainConfig, run: Run, state: TrainState, *, losses: list[float], finished: bool,
                  minutes: float, presegmenter: CrossFittedPresegmenter | None) -> dict[str, Any] | None:
    """Rank 0, every ``val_every`` epochs and at the end: validate the EMA network, record, save checkpoints.

    Returns the history record, or ``None`` when this epoch does not validate.
    """
    if not run.is_main or not (state.epoch % config.validation.val_every == 0 or finished):
        return None
    record: dict[str, Any] = {"epoch": state.epoch, "step": state.step, "loss": float(np.mean(losses)),
                              "minutes": minutes}
    improved = True  # without validation patients the latest EMA is the best there is
    if run.data.validation:
        if run.slabs is None:
            dice = validate(state.ema, run.cache, run.data.validation, scheduler=run.scheduler, config=config,
                            device=run.device, presegmenter=presegmenter)
        else:
            dice = validate_slabs(state.ema, run.slabs.validation, scheduler=run.scheduler, config=config,
                                  device=run.device)
        record["val_dice"] = dice.mean(axis=0).round(4).tolist()
        record["val_mdice"] = round(float(dice.mean()), 4)
        improved = record["val_mdice"] > state.best_metric
        state.best_metric = max(state.best_metric, record["val_mdice"])
    state.history.append(record)
    if improved:
        save_training_checkpoint(run.best_path, config, run, state)
    save_training_checkpoint(run.last_path, config, run, state)
    return record


def _fork_devices() -> list[int]:
    """CUDA devices whose random state :func:`torch.random.fork_rng` must keep (all of them, as
    ``torch.manual_seed`` seeds every device)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _parallel(net: torch.nn.Module, run: Run) -> torch.nn.Module:
    """The network to train: wrapped in DistributedDataParallel under torchrun, else as it is."""
    if run.world == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[run.device.index] if run.device.type == "cuda" else None)


@dataclass
class _Budget:
    """When this call stops early: after ``max_minutes`` of wall time or ``max_steps`` optimiser steps."""

    max_minutes: float | None
    max_steps: int | None
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    spent: bool = False

    def count_step(self) -> None:
        self.steps += 1
        out_of_time = self.max_minutes is not None and self.minutes() > self.max_minutes
        self.spent = out_of_time or (self.max_steps is not None and self.steps >= self.max_steps)

    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60


def _train_epoch(model: torch.nn.Module, state: TrainState, config: TrainConfig, run: Run, *, steps_per_epoch: int,
                 presegmenter: CrossFittedPresegmenter | None, budget: _Budget, bar) -> list[float]:
    """Train the rest of the epoch (all of it, unless resumed within it) or until the budget is spent; returns
    the epoch's losses so far. A complete epoch is counted and the place within it reset."""
    total_steps = steps_per_epoch * config.optimisation.epochs
    model.train()
    while state.step_in_epoch < steps_per_epoch and not budget.spent:
        lr = _learning_rate(config, state.step, total_steps)
        state.epoch_losses.append(_training_step(model, state, config, run, presegmenter=presegmenter, lr=lr))
        state.step, state.step_in_epoch = state.step + 1, state.step_in_epoch + 1
        budget.count_step()
        bar.update(1)
        bar.set_postfix(epoch=state.epoch, loss=f"{np.mean(state.epoch_losses[-20:]):.4f}", lr=f"{lr:.1e}")
    losses = state.epoch_losses
    if state.step_in_epoch == steps_per_epoch:
        state.epoch, state.step_in_epoch, state.epoch_losses = state.epoch + 1, 0, []
    return losses


def train(config: TrainConfig, *, progress: bool = True, resume: bool = False,
          stop_after_steps: int | None = None) -> Path:
    """Train a network and return the run folder (holding ``best.pt``, ``last.pt``, ``config.json``).

    Args:
        config: the run's settings.
        progress: show a progress bar with the loss and the time left.
        resume: continue from ``<out>/last.pt``; without it an existing run folder is refused.
        stop_after_steps: stop after this many optimiser steps in this call (tests, smoke runs); the run
            validates and saves its place, and ``resume`` continues from there.
    """
    from tqdm.auto import tqdm

    run = set_up_run(config, resume=resume, progress=progress)
    epochs = config.optimisation.epochs
    steps_per_epoch = max(1, math.ceil(run.num_training_items / (config.optimisation.batch_size * run.world)))
    with torch.random.fork_rng(devices=_fork_devices()):
        torch.manual_seed(config.optimisation.seed)  # same initial weights on every rank
        net = build_network(config, run, resume=resume)
        presegmenter = run_presegmenter(config, run)
        state = _initial_state(config, run, net, resume=resume)
        model = _parallel(net, run)
        budget = _Budget(config.runtime.max_minutes, stop_after_steps)
        bar = tqdm(total=steps_per_epoch * epochs, initial=state.step, desc="train", unit="step",
                   disable=not (progress and run.is_main))
        while state.epoch < epochs and not budget.spent:
            losses = _train_epoch(model, state, config, run, steps_per_epoch=steps_per_epoch,
                                  presegmenter=presegmenter, budget=budget, bar=bar)
            record = _end_of_epoch(config, run, state, losses=losses, presegmenter=presegmenter,
                                   finished=budget.spent or state.epoch >= epochs, minutes=budget.minutes())
            if record is not None:
                bar.write(json.dumps(record))
        bar.close()
    stop_processes(run)
    return run.out
