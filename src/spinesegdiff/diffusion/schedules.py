"""Discrete noise schedules (``beta_t`` for ``t = 0 .. T - 1``) and the forward noising ``q(x_t | x0)``.

Index convention: timestep ``t`` is a 0-based integer in ``[0, T)``; ``alphas_cumprod[t] = prod_{s <= t}
(1 - beta_s)`` is the signal fraction ``abar_t`` left after noising step ``t`` (the convention of diffusers,
so ``t = 0`` is already slightly noisy and ``t = T - 1`` is almost pure noise).

Schedule tensors are float64 and live on the CPU; :func:`add_noise` gathers the values it needs and moves only
those to the data's device and dtype, so a schedule never changes device behind the caller's back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from spinesegdiff.diffusion.config import SCHEDULE_KINDS, ScheduleKind, SchedulerConfig

__all__ = ["SCHEDULE_KINDS", "NoiseSchedule", "ScheduleKind", "SchedulerConfig", "add_noise", "make_schedule"]

_COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal (2021), eq. 17
_MAX_BETA = 0.999  # beta clip of the cosine schedule (Nichol & Dhariwal, 2021)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A fixed discrete diffusion schedule.

    Attributes:
        kind: ``"linear"`` or ``"cosine"``.
        betas: ``(T,)`` float64, per-step noise variances in ``(0, 1)``.
        alphas_cumprod: ``(T,)`` float64, ``abar_t``, strictly decreasing, in ``(0, 1)``.
    """

    kind: str
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    def __post_init__(self) -> None:
        if self.betas.ndim != 1 or self.betas.shape != self.alphas_cumprod.shape:
            raise ValueError(
                f"betas and alphas_cumprod must be 1D of equal length, got shapes {tuple(self.betas.shape)} "
                f"and {tuple(self.alphas_cumprod.shape)}"
            )
        if self.betas.dtype != torch.float64 or self.alphas_cumprod.dtype != torch.float64:
            raise ValueError("schedule tensors must be float64")

    @property
    def num_train_timesteps(self) -> int:
        """``T``, the number of training timesteps."""
        return int(self.betas.shape[0])


def _cosine_betas(num_train_timesteps: int) -> torch.Tensor:
    """Betas of the cosine schedule: ``abar(u) = cos^2((u + s) / (1 + s) * pi / 2)``, ``u = t / T``."""

    def abar(u: float) -> float:
        return math.cos((u + _COSINE_OFFSET) / (1.0 + _COSINE_OFFSET) * math.pi / 2.0) ** 2

    steps = num_train_timesteps
    betas = [min(1.0 - abar((i + 1) / steps) / abar(i / steps), _MAX_BETA) for i in range(steps)]
    return torch.tensor(betas, dtype=torch.float64)


def make_schedule(
    kind: ScheduleKind = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> NoiseSchedule:
    """Build a noise schedule.

    Args:
        kind: ``"linear"`` (betas evenly spaced from ``beta_start`` to ``beta_end``, the paper's choice) or
            ``"cosine"`` (Nichol & Dhariwal 2021, ``s = 0.008``, betas clipped at 0.999; ``beta_start`` and
            ``beta_end`` are ignored), used by the reference code and for presegmentation noising.
        num_train_timesteps: ``T`` (1000 in the paper).
        beta_start: first beta of the linear schedule.
        beta_end: last beta of the linear schedule.

    Raises:
        ValueError: unknown kind, ``T < 1``, or betas outside ``(0, 1)``.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be at least 1, got {num_train_timesteps}")
    if kind == "linear":
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    else:
        betas = _cosine_betas(num_train_timesteps)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return NoiseSchedule(kind=kind, betas=betas, alphas_cumprod=alphas_cumprod)


def add_noise(
    x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, schedule: NoiseSchedule
) -> torch.Tensor:
    """Sample ``q(x_t | x0)``: ``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise``.

    Args:
        x0: ``(B, C, ...)`` clean masks, in ``[-1, 1]`` for SpineSegDiff.
        noise: standard normal noise of the same shape as ``x0``.
        timesteps: ``(B,)`` integer tensor, one timestep in ``[0, T)`` per batch element.
        schedule: the schedule to read ``abar_t`` from.

    Returns:
        ``x_t`` with the shape, dtype and device of ``x0``.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    if timesteps.ndim != 1 or timesteps.shape[0] != x0.shape[0]:
        raise ValueError(f"timesteps must have shape ({x0.shape[0]},), got {tuple(timesteps.shape)}")
    if timesteps.dtype.is_floating_point or timesteps.dtype == torch.bool:
        raise ValueError(f"timesteps must be an integer tensor, got {timesteps.dtype}")
    steps = timesteps.detach().cpu().long()
    if steps.numel() and (int(steps.min()) < 0 or int(steps.max()) >= schedule.num_train_timesteps):
        raise ValueError(
            f"timesteps must lie in [0, {schedule.num_train_timesteps}), got {steps.min()}..{steps.max()}"
        )
    abar = schedule.alphas_cumprod[steps]
    view = (-1,) + (1,) * (x0.ndim - 1)
    signal = abar.sqrt().to(device=x0.device, dtype=x0.dtype).view(view)
    noise_scale = (1.0 - abar).sqrt().to(device=x0.device, dtype=x0.dtype).view(view)
    return signal * x0 + noise_scale * noise
