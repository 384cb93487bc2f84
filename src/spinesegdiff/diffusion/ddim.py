"""Deterministic and stochastic DDIM sampling steps (Song et al., 2021, eq. 12 and 16).

Driven like a diffusers scheduler::

    scheduler = DDIMScheduler(make_schedule("linear"), prediction_type="sample")
    scheduler.set_timesteps(50)
    for t in scheduler.timesteps:
        x = scheduler.step(model_output_for(x, t), int(t), x, generator=g).prev_sample

With ``set_timesteps(n)`` the timesteps use diffusers' ``"leading"`` spacing, ``arange(n) * (T // n)``
reversed, and the result matches ``diffusers.DDIMScheduler(set_alpha_to_one=True, steps_offset=0)``. With
``set_timesteps(n, start_timestep=T_pre)`` the ``n`` timesteps run evenly from ``T_pre`` down to 0 (both
included), for refining a noised presegmentation. After the last timestep the "previous" ``abar`` is 1, so the
final ``prev_sample`` is the clean estimate itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from spinesegdiff.diffusion.schedules import NoiseSchedule

PredictionType = Literal["sample", "epsilon"]
PREDICTION_TYPES: tuple[str, ...] = ("sample", "epsilon")


@dataclass(frozen=True)
class DDIMStepOutput:
    """Result of one DDIM step.

    Attributes:
        prev_sample: ``x_{t_prev}``, the sample at the next (less noisy) timestep, shape of the input sample.
        pred_original_sample: the clean estimate ``x0_hat`` used by the step (clipped to ``[-1, 1]`` when the
            scheduler clips), shape of the input sample.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class DDIMScheduler:
    """DDIM reverse process over a :class:`NoiseSchedule`.

    Args:
        schedule: the training noise schedule.
        prediction_type: what the model output passed to :meth:`step` is: ``"sample"`` (an ``x0`` estimate in
            ``[-1, 1]``, SpineSegDiff; convert logits with ``2 * sigmoid(logits) - 1`` first) or ``"epsilon"``
            (the noise, IISDM).
        eta: DDIM stochasticity, 0 deterministic, 1 DDPM-like.
        clip_sample: clip ``x0_hat`` to ``[-1, 1]`` before it is used.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        *,
        prediction_type: PredictionType = "sample",
        eta: float = 0.0,
        clip_sample: bool = True,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if eta < 0.0:
            raise ValueError(f"eta must be non-negative, got {eta}")
        self.schedule = schedule
        self.prediction_type: str = prediction_type
        self.eta = float(eta)
        self.clip_sample = bool(clip_sample)
        self.final_alpha_cumprod = 1.0
        self._alphas_cumprod = schedule.alphas_cumprod.tolist()  # python floats: no device traffic per step
        self._timesteps: torch.Tensor | None = None
        self._previous: dict[int, int] = {}

    @property
    def num_train_timesteps(self) -> int:
        """``T`` of the underlying schedule."""
        return self.schedule.num_train_timesteps

    @property
    def num_inference_steps(self) -> int | None:
        """Number of timesteps set by :meth:`set_timesteps`, ``None`` before."""
        return None if self._timesteps is None else int(self._timesteps.shape[0])

    @property
    def timesteps(self) -> torch.Tensor:
        """``(n,)`` int64 CPU tensor of timesteps, descending; ``ValueError`` before :meth:`set_timesteps`."""
        if self._timesteps is None:
            raise ValueError("timesteps are not set: call set_timesteps(num_inference_steps) first")
        return self._timesteps

    def set_timesteps(self, num_inference_steps: int, start_timestep: int | None = None) -> None:
        """Choose the timesteps of the reverse process.

        Args:
            num_inference_steps: number of model evaluations ``n``, ``1 <= n <= T``.
            start_timestep: ``None`` for a full run from pure noise (leading spacing,
                ``arange(n) * (T // n)`` reversed), or ``T_pre`` in ``[0, T)`` to start from a sample noised
                to ``T_pre``: then the timesteps are ``n`` integers spaced evenly from ``T_pre`` down to 0,
                both included (``n <= T_pre + 1``).
        """
        steps = int(num_inference_steps)
        total = self.num_train_timesteps
        if not 1 <= steps <= total:
            raise ValueError(f"num_inference_steps must lie in [1, {total}], got {num_inference_steps}")
        if start_timestep is None:
            ratio = total // steps
            values = [i * ratio for i in range(steps - 1, -1, -1)]
        else:
            start = int(start_timestep)
            if not 0 <= start < total:
                raise ValueError(f"start_timestep must lie in [0, {total}), got {start_timestep}")
            if steps > start + 1:
                raise ValueError(
                    f"num_inference_steps ({steps}) cannot exceed start_timestep + 1 ({start + 1}): the "
                    "timesteps from start_timestep down to 0 would repeat"
                )
            if steps == 1:
                values = [start]
            else:
                # round(k * start / (steps - 1)) half up, in exact integer arithmetic: distinct and descending
                values = [(2 * k * start + steps - 1) // (2 * (steps - 1)) for k in range(steps - 1, -1, -1)]
        self._timesteps = torch.tensor(values, dtype=torch.int64)
        self._previous = {t: (values[i + 1] if i + 1 < len(values) else -1) for i, t in enumerate(values)}

    def previous_timestep(self, timestep: int) -> int:
        """The timestep after ``timestep`` in :attr:`timesteps`, ``-1`` after the last one."""
        if self._timesteps is None:
            raise ValueError("timesteps are not set: call set_timesteps(num_inference_steps) first")
        key = int(timestep)
        if key not in self._previous:
            raise ValueError(
                f"timestep {key} is not one of the scheduled timesteps {self._timesteps.tolist()}"
            )
        return self._previous[key]

    def _alpha_prod(self, timestep: int) -> float:
        return self._alphas_cumprod[timestep] if timestep >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> DDIMStepOutput:
        """One reverse step from ``x_t`` to ``x_{t_prev}``.

        Args:
            model_output: ``x0`` estimate in ``[-1, 1]`` or predicted noise (per ``prediction_type``), the
                shape of ``sample``.
            timestep: the current timestep ``t`` (an element of :attr:`timesteps`), shared by the whole batch.
            sample: ``x_t``, ``(N, C, H, W)`` (any shape works), on any device.
            generator: drives the noise added when ``eta > 0``; the noise is drawn on the generator's device
                and moved to the sample's device.

        Returns:
            :class:`DDIMStepOutput` with ``prev_sample`` and ``pred_original_sample``.
        """
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output must have the shape of sample {tuple(sample.shape)}, "
                f"got {tuple(model_output.shape)}"
            )
        t = int(timestep)
        t_prev = self.previous_timestep(t)
        alpha_prod_t = self._alpha_prod(t)
        alpha_prod_prev = self._alpha_prod(t_prev)
        beta_prod_t = 1.0 - alpha_prod_t

        if self.prediction_type == "epsilon":
            pred_original = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
            pred_epsilon = model_output
        else:
            pred_original = model_output
            pred_epsilon = (sample - alpha_prod_t**0.5 * model_output) / beta_prod_t**0.5
        if self.clip_sample:
            pred_original = pred_original.clamp(-1.0, 1.0)

        variance = (1.0 - alpha_prod_prev) / beta_prod_t * (1.0 - alpha_prod_t / alpha_prod_prev)
        std_dev = self.eta * max(variance, 0.0) ** 0.5
        direction = max(1.0 - alpha_prod_prev - std_dev**2, 0.0) ** 0.5 * pred_epsilon
        prev_sample = alpha_prod_prev**0.5 * pred_original + direction
        if self.eta > 0.0:
            noise_device = generator.device if generator is not None else sample.device
            noise = torch.randn(
                sample.shape, generator=generator, device=noise_device, dtype=sample.dtype
            ).to(sample.device)
            prev_sample = prev_sample + std_dev * noise
        return DDIMStepOutput(prev_sample=prev_sample, pred_original_sample=pred_original)
