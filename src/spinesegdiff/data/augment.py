"""Batch augmentation for sagittal MRI slices, on tensors (CPU or GPU), driven by a ``torch.Generator``.

Spatial: small rotation, scaling and translation, applied to image (bilinear) and labels (nearest) alike; no
flips (the model grid has a fixed anatomical orientation). Intensity: random gamma, random intensity remapping
(a random piecewise-linear curve that keeps air dark, sometimes non-monotone, which turns T2-like contrast into
T1-like contrast and back: our real data is T2 only), a smooth multiplicative bias field, Gaussian noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (``enabled=False`` turns all off)."""

    enabled: bool = True
    rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.12)
    translation: float = 0.06
    p_spatial: float = 0.8
    p_gamma: float = 0.4
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_remap: float = 0.35
    remap_points: int = 6
    p_inversion: float = 0.2
    p_bias: float = 0.4
    bias_amplitude: float = 0.35
    p_noise: float = 0.3
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        for name in ("p_spatial", "p_gamma", "p_remap", "p_inversion", "p_bias", "p_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        object.__setattr__(self, "scale_range", tuple(self.scale_range))
        object.__setattr__(self, "gamma_range", tuple(self.gamma_range))


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low


def _chance(batch: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(batch, generator=generator, device=device) < p


def spatial_transform(image: torch.Tensor, labels: torch.Tensor, config: AugmentConfig,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random similarity transform of ``image`` ``(B, 1, H, W)`` in [0, 1] and ``labels`` ``(B, H, W)`` int."""
    batch, device = image.shape[0], image.device
    angle = _uniform((batch,), -1, 1, generator, device) * math.radians(config.rotation_deg)
    scale = _uniform((batch,), *config.scale_range, generator, device)
    shift = _uniform((batch, 2), -config.translation, config.translation, generator, device) * 2
    apply = _chance(batch, config.p_spatial, generator, device)
    angle, scale = torch.where(apply, angle, 0.0), torch.where(apply, scale, 1.0)
    shift = torch.where(apply[:, None], shift, 0.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped_labels = F.grid_sample(labels[:, None].to(image.dtype), grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False)
    return warped, warped_labels[:, 0].round().to(labels.dtype)


def random_remap(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Pass intensities in [0, 1] through a random piecewise-linear curve with ``f(0) = 0`` (air stays dark)."""
    batch, device = image.shape[0], image.device
    points = config.remap_points
    knots = torch.rand((batch, points), generator=generator, device=device)
    knots[:, 0] = 0.0
    monotone = _chance(batch, 0.5, generator, device)
    knots = torch.where(monotone[:, None], torch.sort(knots, dim=1).values, knots)
    position = image.clamp(0, 1) * (points - 1)
    low = position.floor().long().clamp(max=points - 2)
    frac = position - low
    flat_low = low.view(batch, -1)
    left = torch.gather(knots, 1, flat_low).view_as(image)
    right = torch.gather(knots, 1, flat_low + 1).view_as(image)
    return left + frac * (right - left)


def invert_contrast(image: torch.Tensor, threshold: float = 0.08) -> torch.Tensor:
    """``1 - x`` on tissue, air (below ``threshold``) kept dark: a crude T2 <-> T1 swap of fluid and fat."""
    return torch.where(image > threshold, 1.0 - image + threshold, image)


def bias_field(shape: tuple[int, ...], amplitude: float, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """Smooth multiplicative field ``exp(a * quadratic polynomial)`` of shape ``(B, 1, H, W)``, mean about 1."""
    batch, _, height, width = shape
    y = torch.linspace(-1, 1, height, device=device)[:, None]
    x = torch.linspace(-1, 1, width, device=device)[None, :]
    terms = (x, y, x * y, x**2 - 1 / 3, y**2 - 1 / 3)
    basis = torch.stack([term.expand(height, width) for term in terms])
    coefficients = _uniform((batch, basis.shape[0]), -1, 1, generator, device)
    return torch.exp(amplitude * torch.einsum("bk,khw->bhw", coefficients, basis))[:, None]


def augment_batch(image: torch.Tensor, labels: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch.

    Args:
        image: ``(B, 1, H, W)`` float in [0, 1].
        labels: ``(B, H, W)`` integer classes.
        config: what to apply.
        generator: a generator on the tensors' device; the same state gives the same batch.

    Returns:
        ``(image in [0, 1], labels)`` of the same shapes and dtypes.
    """
    if not config.enabled:
        return image, labels
    batch, device = image.shape[0], image.device
    image, labels = spatial_transform(image, labels, config, generator)
    gamma = _uniform((batch, 1, 1, 1), *config.gamma_range, generator, device)
    gamma = torch.where(_chance(batch, config.p_gamma, generator, device)[:, None, None, None], gamma, 1.0)
    image = image.clamp(0, 1) ** gamma
    remapped = random_remap(image, config, generator)
    image = torch.where(_chance(batch, config.p_remap, generator, device)[:, None, None, None], remapped, image)
    inverted = invert_contrast(image)
    image = torch.where(_chance(batch, config.p_inversion, generator, device)[:, None, None, None], inverted, image)
    field = bias_field(tuple(image.shape), config.bias_amplitude, generator, device)
    image = torch.where(_chance(batch, config.p_bias, generator, device)[:, None, None, None], image * field, image)
    noise = torch.randn(image.shape, generator=generator, device=device) * config.noise_std
    image = torch.where(_chance(batch, config.p_noise, generator, device)[:, None, None, None], image + noise, image)
    return image.clamp(0, 1), labels
