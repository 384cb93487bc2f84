"""Training: one loop for every variant, with EMA, validation Dice, checkpoints, resume and DDP.

The loop draws a batch of cached 320 x 320 slices, augments it, noises the one-hot mask
``x0 = 2 * onehot - 1`` to a random step ``t``, and trains the network to return ``x0`` (logits; loss
MSE + Dice + BCE on ``sigmoid(logits)``) or, for IISDM, the noise (MSE). Every ``val_every`` epochs the EMA
network segments the validation patients' central slices with the multi-sample DDIM sampler; the best
validation mean Dice is kept in ``best.pt``, the latest state in ``last.pt`` (both resumable).

Validation patients are taken from the training folds (``val_fraction`` of the training patients, seeded),
never from the test fold. Under ``torchrun`` each process trains on its own batches (DistributedDataParallel,
NCCL on GPUs, Gloo on CPUs); only rank 0 validates and writes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from spinesegdiff.data.augment import AugmentConfig, augment_batch
from spinesegdiff.data.cache import SliceCache
from spinesegdiff.data.folds import FoldSettings, fold_data, open_data
from spinesegdiff.data.splits import save_split
from spinesegdiff.devices import resolve_device
from spinesegdiff.diffusion import DDIMScheduler, add_noise, make_schedule
from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.models import (
    ModelConfig,
    build_model,
    is_diffusion_model,
    model_prediction_type,
    preset_config,
)
from spinesegdiff.models.checkpoint import load_checkpoint, resolve_model_file, save_checkpoint
from spinesegdiff.pipelines.presegmenters import CrossFittedPresegmenter
from spinesegdiff.pipelines.sampling import sample_segmentation
from spinesegdiff.training.losses import dice_cross_entropy_loss, epsilon_loss, segmentation_loss


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on; saved in the run folder and in every checkpoint.

    ``fold`` is the test fold (0-based) of a ``num_folds`` patient split, or ``-1`` to train on every case (the
    shipped model). ``max_minutes`` stops training gracefully (a final validation and checkpoint) when the wall
    time is spent. ``holdout_patients`` are left out of training and validation as well (cross-fitted
    presegmenters); ``crossfit_part`` ``"k/n"`` holds out part ``k`` of ``n`` seeded parts of the fold's training
    patients (:func:`crossfit_parts`). ``init_from`` starts from a checkpoint's EMA
    weights (fine-tuning).

    Presegmentation refinement (``preseg_models`` set, diffusion variants): each training slice is presegmented
    on the fly, after augmentation, by a built-in U-Net that never trained on its patient (cross-fitting);
    that mask, noised to ``t``, replaces the noised ground truth, and the target stays the ground truth. ``t`` is
    drawn uniformly from ``[0, preseg_focus_timestep]`` with probability ``preseg_focus_share`` and from
    ``[0, preseg_max_timestep]`` otherwise, so one model refines from any ``T_pre`` and is best at the focus.
    """

    data: str
    out: str
    preset: str = "compact"
    variant: str = "spinesegdiff"
    model: dict[str, Any] | None = None
    fold: int = 0
    num_folds: int = 5
    split_file: str | None = None
    split_seed: int = 12345
    val_fraction: float = 0.15
    seed: int = 0
    epochs: int = 300
    batch_size: int = 4
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    schedule: Literal["linear", "cosine"] = "linear"
    num_train_timesteps: int = 1000
    val_every: int = 10
    val_samples: int = 3
    val_steps: int = 10
    val_fuse_steps: int = 5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    device: str = "auto"
    amp: bool = True
    max_minutes: float | None = None
    threads: int | None = None
    holdout_patients: tuple[str, ...] = ()
    crossfit_part: str | None = None
    init_from: str | None = None
    preseg_models: tuple[str, ...] = ()
    preseg_max_timestep: int = 999
    preseg_focus_timestep: int = 30
    preseg_focus_share: float = 0.5

    def __post_init__(self) -> None:
        if self.fold < -1 or self.fold >= self.num_folds:
            raise ValueError(f"fold must be -1 (all data) or in 0..{self.num_folds - 1}, got {self.fold}")
        if self.batch_size < 1 or self.epochs < 1 or self.val_every < 1:
            raise ValueError("batch_size, epochs and val_every must be positive")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.lr <= 0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("lr must be positive and ema_decay in [0, 1)")
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))
        object.__setattr__(self, "holdout_patients", tuple(str(p) for p in self.holdout_patients))
        object.__setattr__(self, "preseg_models", tuple(str(p) for p in self.preseg_models))
        if not 0 <= self.preseg_focus_timestep <= self.preseg_max_timestep < self.num_train_timesteps:
            raise ValueError("need 0 <= preseg_focus_timestep <= preseg_max_timestep < num_train_timesteps")
        if self.crossfit_part is not None:
            part, _, parts = str(self.crossfit_part).partition("/")
            if not (part.isdigit() and parts.isdigit() and 1 <= int(part) <= int(parts) and int(parts) >= 2):
                raise ValueError(f"crossfit_part must read 'k/n' with 1 <= k <= n, n >= 2; got {self.crossfit_part!r}")
        if not 0.0 <= self.preseg_focus_share <= 1.0:
            raise ValueError(f"preseg_focus_share must lie in [0, 1], got {self.preseg_focus_share}")

    def fold_settings(self) -> FoldSettings:
        """The settings that choose this run's training, validation and test patients."""
        return FoldSettings(fold=self.fold, num_folds=self.num_folds, split_file=self.split_file,
                            split_seed=self.split_seed, val_fraction=self.val_fraction, val_seed=self.seed,
                            holdout_patients=self.holdout_patients, crossfit_part=self.crossfit_part)

    def model_config(self) -> ModelConfig:
        if self.model is not None:
            return ModelConfig.from_dict(self.model)
        return preset_config(self.preset, variant=self.variant)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**data)


def batch_tensors(cache: SliceCache, indices: np.ndarray | list[int], device: torch.device,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached slices -> image ``(B, 1, H, W)`` float32 in [0, 1] and labels ``(B, H, W)`` int64."""
    order = np.asarray(indices)
    image = torch.from_numpy(np.asarray(cache.images[order], dtype=np.float32) / 255.0)[:, None]
    labels = torch.from_numpy(np.asarray(cache.labels[order], dtype=np.int64))
    return image.to(device), labels.to(device)


def one_hot_x0(labels: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Labels ``(B, H, W)`` in {0..3} -> ``(B, 3, H, W)`` one-hot of SC, VB, IVD as ``{0, 1}`` float."""
    return torch.stack([(labels == c) for c in range(1, channels + 1)], dim=1).float()


def make_scheduler(config: TrainConfig, model_config: ModelConfig) -> DDIMScheduler:
    schedule = make_schedule(config.schedule, num_train_timesteps=config.num_train_timesteps)
    return DDIMScheduler(schedule, prediction_type=model_prediction_type(model_config))


def training_loss(net: torch.nn.Module, image: torch.Tensor, labels: torch.Tensor, *, schedule,
                  prediction_type: str, generator: torch.Generator | None = None,
                  max_timestep: int | None = None, start_mask: torch.Tensor | None = None,
                  timesteps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One diffusion training loss on a batch.

    Args:
        image: ``(B, 1, H, W)`` in [-1, 1].
        labels: ``(B, H, W)`` classes.
        schedule: the :class:`~spinesegdiff.diffusion.NoiseSchedule`.
        prediction_type: ``sample`` (x0 logits, MSE + Dice + BCE) or ``epsilon`` (noise MSE).
        max_timestep: draw ``t`` from ``[0, max_timestep]`` (presegmentation training) instead of ``[0, T)``.
        start_mask: ``(B, 3, H, W)`` in [0, 1]: noise this mask (a presegmentation) instead of the ground truth.
        timesteps: ``(B,)`` steps to use instead of drawing them.
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
        loss = epsilon_loss(output.float(), noise)
        return loss, {"mse": loss.detach()}
    return segmentation_loss(output.float(), target01)


@torch.no_grad()
def validate(net: torch.nn.Module, cache: SliceCache, indices: list[int], *, scheduler: DDIMScheduler,
             config: TrainConfig, device: torch.device, batch: int = 4,
             presegmenter: CrossFittedPresegmenter | None = None) -> np.ndarray:
    """Per-slice Dice ``(N, 3)`` of the label maps on cached slices (320 x 320 grid).

    Diffusion models are sampled (from noise, or with ``presegmenter`` from its mask noised to
    ``config.preseg_focus_timestep``); a segmentation U-Net is argmaxed.
    """
    generator = torch.Generator(device=device).manual_seed(config.seed)
    scores = []
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        image, labels = batch_tensors(cache, chunk, device)
        if not is_diffusion_model(net.config):
            predicted_labels = net(image * 2 - 1).argmax(dim=1)
        else:
            refine = {}
            if presegmenter is not None:
                patients = [cache.entries[i].patient for i in chunk]
                start_timestep = config.preseg_focus_timestep
                refine = {"start_mask": presegmenter.probabilities(image * 2 - 1, patients)[:, 1:],
                          "start_timestep": start_timestep}
            steps = min(config.val_steps, refine["start_timestep"] + 1) if refine else config.val_steps
            result = sample_segmentation(
                net, image * 2 - 1, scheduler=scheduler, num_samples=config.val_samples, num_steps=steps,
                fuse_steps=min(config.val_fuse_steps, steps), generator=generator,
                prediction_type=scheduler.prediction_type, **refine,
            )
            predicted_labels = result.labels
        for predicted, truth in zip(predicted_labels.cpu().numpy(), labels.cpu().numpy(), strict=True):
            scores.append(dice_per_class(predicted, truth))
    return np.asarray(scores).reshape(-1, 3)


def load_crossfitted_presegmenter(config: TrainConfig, cache: SliceCache, device: torch.device
                                  ) -> CrossFittedPresegmenter:
    """The run's ``preseg_models`` with, for each, the patients it trained or validated on."""
    from spinesegdiff.pipelines.presegmenters import UNetPresegmenter

    models, seen = [], []
    for path in config.preseg_models:
        presegmenter = UNetPresegmenter.from_checkpoint(path, device=device)
        its_config = TrainConfig.from_dict(presegmenter.train_config)
        its_data = fold_data(its_config.fold_settings(), cache)
        seen.append({cache.entries[i].patient for i in [*its_data.train, *its_data.validation]})
        models.append(presegmenter)
    return CrossFittedPresegmenter(models, seen)


def _preseg_timesteps(config: TrainConfig, batch: int, generator: torch.Generator,
                      device: torch.device) -> torch.Tensor:
    """Refinement training steps: uniform on ``[0, focus]`` with probability ``focus_share``, else on
    ``[0, preseg_max_timestep]``."""
    focus = torch.rand(batch, generator=generator, device=device) < config.preseg_focus_share
    high = torch.where(focus, config.preseg_focus_timestep + 1, config.preseg_max_timestep + 1)
    return (torch.rand(batch, generator=generator, device=device) * high).long().clamp_max(high - 1)


def _learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
        return config.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
    return config.lr


@torch.no_grad()
def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for target, source in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if target.is_floating_point():
            target.lerp_(source.detach(), 1.0 - decay)
        else:
            target.copy_(source)


def _distributed() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` under torchrun, else ``(0, 0, 1)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def train(config: TrainConfig, *, progress: bool = True, resume: bool = False,
          stop_after_steps: int | None = None) -> Path:
    """Train a network and return the run folder (holding ``best.pt``, ``last.pt``, ``config.json``).

    Args:
        config: the run's settings.
        progress: show a progress bar with the loss and the time left.
        resume: continue from ``<out>/last.pt``; without it an existing run folder is refused.
        stop_after_steps: stop after this many optimiser steps in this call (tests, smoke runs); the checkpoint
            is written as at the end of an epoch.
    """
    from tqdm.auto import tqdm

    rank, local_rank, world = _distributed()
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() and config.device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
        device = torch.device(f"cuda:{local_rank}") if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(device)
    else:
        device = resolve_device(config.device, quiet=not progress)
    if config.threads:
        torch.set_num_threads(config.threads)
    is_main = rank == 0
    out = Path(config.out)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if last_path.exists() and not resume:
        raise InputError(out, "already holds a training run; pass --resume to continue it or choose a new --out")
    if resume and not last_path.exists():
        raise InputError(out, "has no last.pt to resume from")
    out.mkdir(parents=True, exist_ok=True)

    if world > 1 and not is_main:
        torch.distributed.barrier()  # rank 0 builds the cache first (from a SPIDER folder)
    cache = open_data(config.data, config.out, quiet=not (progress and is_main))
    if world > 1 and is_main:
        torch.distributed.barrier()
    data = fold_data(config.fold_settings(), cache)
    if not data.train:
        raise InputError(config.data, "no training slices for this fold")
    model_config = config.model_config()
    if is_main:
        (out / "config.json").write_text(json.dumps(
            {"train": config.to_dict(), "model": model_config.to_dict()}, indent=2, default=str))
        save_split(data.split, out / "splits_final.json")

    torch.manual_seed(config.seed)  # same initial weights on every rank; batches differ by rank below
    net = build_model(model_config).to(device)
    if config.init_from and not resume:
        initial = load_checkpoint(resolve_model_file(config.init_from), map_location="cpu")
        if ModelConfig.from_dict(initial["model_config"]) != model_config:
            raise InputError(config.init_from, "holds a network of another configuration than this run's")
        net.load_state_dict(initial.get("ema") or initial["model"])
    diffusion = is_diffusion_model(model_config)
    presegmenter = None
    if config.preseg_models:
        if not diffusion:
            raise SpineSegDiffError("presegmentation refinement trains a diffusion variant, not a U-Net")
        presegmenter = load_crossfitted_presegmenter(config, cache, device)
        try:
            presegmenter.check_covers([cache.entries[i].patient for i in [*data.train, *data.validation]])
        except ValueError as err:
            raise SpineSegDiffError(str(err)) from err
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(config, model_config)
    prediction_type = scheduler.prediction_type
    schedule = scheduler.schedule
    generator = torch.Generator(device=device).manual_seed(config.seed * 1000 + rank)
    sampler_rng = np.random.default_rng(config.seed * 1000 + rank)
    step, epoch, best_metric, history = 0, 0, -1.0, []
    if resume:
        payload = load_checkpoint(last_path, map_location=device)
        net.load_state_dict(payload["model"])
        ema.load_state_dict(payload["ema"])
        optimizer.load_state_dict(payload["optimizer"])
        step, epoch = payload["step"], payload["epoch"]
        best_metric, history = payload["best_metric"], payload["history"]
        generator.set_state(payload["rng"]["torch"].to(generator.get_state().device))
        sampler_rng.bit_generator.state = payload["rng"]["numpy"]
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = config.amp and device.type == "cuda"

    steps_per_epoch = max(1, math.ceil(len(data.train) / (config.batch_size * world)))
    total_steps = steps_per_epoch * config.epochs
    started = time.monotonic()
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not (progress and is_main))

    def checkpoint(path: Path) -> None:
        save_checkpoint(path, {
            "model_config": model_config.to_dict(), "train_config": config.to_dict(),
            "model": net.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "epoch": epoch, "best_metric": best_metric, "history": history,
            "rng": {"torch": generator.get_state(), "numpy": sampler_rng.bit_generator.state},
        })

    stopped_early = False
    steps_this_call = 0
    while epoch < config.epochs and not stopped_early:
        model.train()
        running = []
        for _ in range(steps_per_epoch):
            lr = _learning_rate(config, step, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            chosen = sampler_rng.choice(data.train, size=config.batch_size, replace=len(data.train) < config.batch_size)
            image, labels = batch_tensors(cache, np.sort(chosen), device)
            image, labels = augment_batch(image, labels, config.augment, generator)
            refine: dict[str, torch.Tensor] = {}
            if presegmenter is not None:
                patients = [cache.entries[i].patient for i in np.sort(chosen)]
                refine = {"start_mask": presegmenter.probabilities(image * 2 - 1, patients)[:, 1:],
                          "timesteps": _preseg_timesteps(config, len(chosen), generator, device)}
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                if diffusion:
                    loss, _ = training_loss(model, image * 2 - 1, labels, schedule=schedule,
                                            prediction_type=prediction_type, generator=generator, **refine)
                else:
                    loss, _ = dice_cross_entropy_loss(model(image * 2 - 1).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            optimizer.step()
            _update_ema(ema, net, min(config.ema_decay, (1 + step) / (10 + step)))
            step += 1
            steps_this_call += 1
            running.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(running[-20:]):.4f}", lr=f"{lr:.1e}")
            out_of_time = config.max_minutes is not None and time.monotonic() - started > 60 * config.max_minutes
            if out_of_time or (stop_after_steps is not None and steps_this_call >= stop_after_steps):
                stopped_early = True
                break
        epoch += 1 if not stopped_early else 0
        finished = epoch >= config.epochs or stopped_early
        record: dict[str, Any] = {"epoch": epoch, "step": step, "loss": float(np.mean(running)),
                                  "minutes": (time.monotonic() - started) / 60}
        if is_main and (epoch % config.val_every == 0 or finished):
            improved = True  # without validation patients the latest EMA is the best there is
            if data.validation:
                dice = validate(ema, cache, data.validation, scheduler=scheduler, config=config, device=device,
                                presegmenter=presegmenter)
                record["val_dice"] = dice.mean(axis=0).round(4).tolist()
                record["val_mdice"] = round(float(dice.mean()), 4)
                improved = record["val_mdice"] > best_metric
                best_metric = max(best_metric, record["val_mdice"])
            history.append(record)
            if improved:
                checkpoint(best_path)
            checkpoint(last_path)
            bar.write(json.dumps(record))
    bar.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return out


def load_train_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON file (keys of :class:`TrainConfig`; ``augment`` may be a nested object)."""
    path = Path(path)
    if not path.is_file():
        raise SpineSegDiffError(f"{path}: no such config file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not a JSON file ({err})") from err
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object of training settings")
    return data.get("train", data)
