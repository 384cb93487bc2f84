"""Validation during training: Dice of the EMA network on the validation patients' central slices (of their
slabs, for a slab network)."""

from __future__ import annotations

import numpy as np
import torch

from spinesegdiff.data.cache import SliceCache
from spinesegdiff.data.slabs import Slabs
from spinesegdiff.diffusion import DDIMScheduler
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.models import is_diffusion_model
from spinesegdiff.pipelines.presegmenters import CrossFittedPresegmenter
from spinesegdiff.pipelines.sampling import sample_segmentation
from spinesegdiff.pipelines.slab_sampling import sample_central_slices
from spinesegdiff.training.config import TrainConfig
from spinesegdiff.training.slab_batches import slab_tensors


def batch_tensors(cache: SliceCache, indices: np.ndarray | list[int], device: torch.device,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached slices -> image ``(B, 1, H, W)`` float32 in [0, 1] and labels ``(B, H, W)`` int64."""
    order = np.asarray(indices)
    image = torch.from_numpy(np.asarray(cache.images[order], dtype=np.float32) / 255.0)[:, None]
    labels = torch.from_numpy(np.asarray(cache.labels[order], dtype=np.int64))
    return image.to(device), labels.to(device)


def _predicted_labels(net: torch.nn.Module, image: torch.Tensor, patients: list[str], *,
                      scheduler: DDIMScheduler, config: TrainConfig, generator: torch.Generator,
                      presegmenter: CrossFittedPresegmenter | None) -> torch.Tensor:
    """Label maps ``(B, H, W)`` of images in [0, 1]: sampled (diffusion) or argmaxed (segmentation U-Net)."""
    if not is_diffusion_model(net.config):
        return net(image * 2 - 1).argmax(dim=1)
    settings = config.validation
    refine = {}
    if presegmenter is not None:
        refine = {"start_mask": presegmenter.probabilities(image * 2 - 1, patients)[:, 1:],
                  "start_timestep": config.refinement.preseg_focus_timestep}
    steps = min(settings.val_steps, refine["start_timestep"] + 1) if refine else settings.val_steps
    result = sample_segmentation(
        net, image * 2 - 1, scheduler=scheduler, num_samples=settings.val_samples, num_steps=steps,
        fuse_steps=min(settings.val_fuse_steps, steps), generator=generator,
        prediction_type=scheduler.prediction_type, **refine,
    )
    return result.labels


@torch.no_grad()
def validate(net: torch.nn.Module, cache: SliceCache, indices: list[int], *, scheduler: DDIMScheduler,
             config: TrainConfig, device: torch.device, batch: int = 4,
             presegmenter: CrossFittedPresegmenter | None = None) -> np.ndarray:
    """Per-slice Dice ``(N, 3)`` of the label maps on cached slices (320 x 320 grid).

    Diffusion models are sampled (from noise, or with ``presegmenter`` from its mask noised to
    ``config.refinement.preseg_focus_timestep``) with a generator seeded by the run's seed, so every validation
    of a run draws the same noise; a segmentation U-Net is argmaxed.
    """
    generator = torch.Generator(device=device).manual_seed(config.optimisation.seed)
    scores = []
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        image, labels = batch_tensors(cache, chunk, device)
        patients = [cache.entries[i].patient for i in chunk]
        predicted_labels = _predicted_labels(net, image, patients, scheduler=scheduler, config=config,
                                             generator=generator, presegmenter=presegmenter)
        for predicted, truth in zip(predicted_labels.cpu().numpy(), labels.cpu().numpy(), strict=True):
            scores.append(dice_per_class(predicted, truth))
    return np.asarray(scores).reshape(-1, 3)


@torch.no_grad()
def validate_slabs(net: torch.nn.Module, slabs: Slabs, *, scheduler: DDIMScheduler, config: TrainConfig,
                   device: torch.device, batch: int = 2) -> np.ndarray:
    """Per-slab Dice ``(N, 3)`` (SC, VB, IVD) of a slab network's central slices against their labels.

    The slabs are sampled from noise (:func:`~spinesegdiff.pipelines.slab_sampling.sample_central_slices`) with
    the validation settings and a generator seeded by the run's seed, as :func:`validate` does for slices.
    """
    settings = config.validation
    generator = torch.Generator(device=device).manual_seed(config.optimisation.seed)
    scores = []
    for start in range(0, len(slabs), batch):
        rows = np.arange(start, min(start + batch, len(slabs)))
        images, labels = slab_tensors(slabs, rows, device)
        central = torch.from_numpy(slabs.central[rows]).to(device)
        result = sample_central_slices(net, images[:, None] * 2 - 1, central, scheduler=scheduler,
                                       num_samples=settings.val_samples, num_steps=settings.val_steps,
                                       fuse_steps=min(settings.val_fuse_steps, settings.val_steps),
                                       generator=generator)
        truth = labels[torch.arange(len(rows), device=device), central]
        for predicted, expected in zip(result.labels.cpu().numpy(), truth.cpu().numpy(), strict=True):
            scores.append(dice_per_class(predicted, expected))
    return np.asarray(scores).reshape(-1, 3)
