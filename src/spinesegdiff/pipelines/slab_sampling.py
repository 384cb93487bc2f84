"""Diff-UNet 3D segmentation of sagittal slabs, read out on each slab's central slice.

A slab network (variant ``diffunet3d``) is sampled as the 2D networks are, by
:func:`~spinesegdiff.pipelines.sampling.sample_segmentation` on 5D tensors: from pure noise, ``S`` DDIM
samples per slab in one batch, the ``x0`` estimates of the last ``Ts`` steps averaged over the samples and
fused with the exponential step weights (paper eq. 3), the uncertainty the maximum over those steps of the
rescaled normalised entropy (eq. 4-5). Every map is a slab ``(D, H, W)``; the system is scored on the
central slice (the slice the 2D systems segment), which :func:`central_result` cuts out.

Intensities: cached ``uint8`` slabs (0..255) become network input by
:func:`~spinesegdiff.data.preprocess.to_network_range`, as the 2D segmenter does for cached slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spinesegdiff.data.preprocess import to_network_range
from spinesegdiff.devices import resolve_device
from spinesegdiff.diffusion import DDIMScheduler
from spinesegdiff.errors import InputError
from spinesegdiff.models import SLAB_VARIANTS, model_prediction_type
from spinesegdiff.models.checkpoint import checkpoint_scheduler, load_model, resolve_model_file
from spinesegdiff.pipelines.sampling import DenoisingNetwork, SegmentationResult, sample_segmentation


def central_result(result: SegmentationResult, central: torch.Tensor) -> SegmentationResult:
    """The central slices of a slab segmentation.

    Args:
        result: :func:`sample_segmentation` output on ``B`` slabs (maps ``(B, K, D, H, W)`` and ``(B, D, H, W)``).
        central: ``(B,)`` int64, the index along ``D`` of each slab's central slice.

    Returns:
        the same result with slices for slabs: ``(B, K, H, W)`` and ``(B, H, W)`` maps.
    """
    rows = torch.arange(central.shape[0], device=central.device)

    def per_class(volume: torch.Tensor) -> torch.Tensor:  # (B, K, D, H, W) -> (B, K, H, W)
        return volume.transpose(1, 2)[rows, central]

    def per_pixel(volume: torch.Tensor) -> torch.Tensor:  # (B, D, H, W) -> (B, H, W)
        return volume[rows, central]

    return SegmentationResult(
        probabilities=per_class(result.probabilities),
        class_probabilities=per_class(result.class_probabilities),
        labels=per_pixel(result.labels),
        uncertainty=per_pixel(result.uncertainty),
        structure_uncertainty=per_class(result.structure_uncertainty),
        variance=per_class(result.variance),
        fused_timesteps=result.fused_timesteps,
        num_network_calls=result.num_network_calls,
        num_image_encoder_calls=result.num_image_encoder_calls,
    )


@torch.no_grad()
def sample_central_slices(net: DenoisingNetwork, image: torch.Tensor, central: torch.Tensor, *,
                          scheduler: DDIMScheduler, num_samples: int, num_steps: int, fuse_steps: int,
                          generator: torch.Generator | None) -> SegmentationResult:
    """Sample slabs from pure noise (exponential step fusion) and keep their central slices.

    Args:
        net: a slab network in ``eval()`` mode, predicting ``x0`` logits.
        image: ``(B, 1, D, H, W)`` slabs in ``[-1, 1]`` on the network's device.
        central: ``(B,)`` int64 central-slice indices in ``[0, D)``, on the same device.
        scheduler: the network's DDIM scheduler (``prediction_type`` ``"sample"``).
        num_samples, num_steps, fuse_steps: ``S``, DDIM steps and ``Ts`` of
            :func:`~spinesegdiff.pipelines.sampling.sample_segmentation`.
        generator: seeds the starting noise.

    Returns:
        :class:`SegmentationResult` of the central slices (see :func:`central_result`).
    """
    result = sample_segmentation(net, image, scheduler=scheduler, num_samples=num_samples, num_steps=num_steps,
                                 fuse_steps=fuse_steps, generator=generator, prediction_type="sample", fusion="exp")
    return central_result(result, central)


def _check_slabs(images: np.ndarray, central: np.ndarray) -> None:
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be (N, D, H, W) uint8 slabs, got {images.ndim}D {images.dtype}")
    if central.shape != (images.shape[0],):
        raise ValueError(f"central must have shape ({images.shape[0]},), got {central.shape}")
    if central.size and (central.min() < 0 or central.max() >= images.shape[1]):
        raise ValueError(f"central slice indices must lie in [0, {images.shape[1]}), got {central.tolist()}")


def segment_slabs(run: Path, images: np.ndarray, central: np.ndarray, *, num_samples: int = 15,
                  num_steps: int = 10, fuse_steps: int = 10, seed: int = 0,
                  device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Segment slabs with a trained Diff-UNet 3D run and return their central slices' results.

    Each slab is sampled on its own (its ``S`` samples in one batch, the image encoder once), all from one
    generator seeded with ``seed``: the same inputs and seed give the same output.

    Args:
        run: a run folder (its ``best.pt``, else ``last.pt``) or a checkpoint of a slab variant.
        images: ``(N, D, H, W)`` ``uint8`` slabs, intensities 0..255 as cached
            (:class:`~spinesegdiff.data.slabs.Slabs`); ``H`` and ``W`` multiples of the network's size divisor.
        central: ``(N,)`` integer index along ``D`` of each slab's central slice.
        num_samples: ``S``, samples per slab.
        num_steps: DDIM steps from pure noise.
        fuse_steps: ``Ts``, final steps fused (at most ``num_steps``).
        seed: seed of the starting noise.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        ``(probabilities, uncertainty)``: the central slices' fused structure probabilities ``(N, 3, H, W)``
        float32 in ``[0, 1]`` (SC, VB, IVD) and their normalised-entropy uncertainty ``(N, H, W)`` float32 in
        ``[0, 1]``.

    Raises:
        MissingInputError, InputError: no model in ``run``, or a model that is not a slab variant.
        ValueError: malformed ``images`` or ``central``.
    """
    images, central = np.asarray(images), np.asarray(central, dtype=np.int64)
    _check_slabs(images, central)
    target = resolve_device(device, quiet=True)
    path = resolve_model_file(run)
    net, config, payload = load_model(path, map_location=target)
    net = net.to(target)
    if config.variant not in SLAB_VARIANTS:
        raise InputError(path, f"holds a {config.variant!r} network, not a slab network ({', '.join(SLAB_VARIANTS)})")
    scheduler = DDIMScheduler(checkpoint_scheduler(payload, path).noise_schedule(),
                              prediction_type=model_prediction_type(config))
    generator = torch.Generator(device=target).manual_seed(seed)
    probabilities, uncertainty = [], []
    with torch.inference_mode():
        for index in range(len(images)):
            slab = torch.from_numpy(to_network_range(images[index:index + 1]))[:, None].to(target)
            result = sample_central_slices(net, slab, torch.from_numpy(central[index:index + 1]).to(target),
                                           scheduler=scheduler, num_samples=num_samples, num_steps=num_steps,
                                           fuse_steps=fuse_steps, generator=generator)
            probabilities.append(result.probabilities.float().cpu().numpy())
            uncertainty.append(result.uncertainty.float().cpu().numpy())
    if not probabilities:
        height, width = images.shape[-2:]
        return (np.zeros((0, config.mask_channels, height, width), np.float32),
                np.zeros((0, height, width), np.float32))
    return np.concatenate(probabilities).astype(np.float32), np.concatenate(uncertainty).astype(np.float32)
