"""The registries and settings of inference, without torch: allowed values live here once.

The command line builds its choices from these tuples (so ``--help``, validation and docs cannot drift) and must
not import torch to do so; this module imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
Backend = Literal["auto", "torch", "openvino"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino")
PRESEGMENTERS: tuple[str, ...] = ("none", "unet", "nnunet")
"""Presegmenter kinds: none (sample from noise), the built-in U-Net, an nnU-Net v2 2d model."""
OUTPUT_FORMATS: tuple[str, ...] = (".nii.gz", ".mha", ".nrrd", ".nii")
"""File formats ``predict`` writes its label and uncertainty images in."""
DEFAULT_PRESEG_STEPS = 30
"""``T_pre``, the noise step a presegmentation is refined from when none is asked for."""
REFINE_STRIDE = 15
"""Noise steps per DDIM step of a refinement (T_pre = 30 -> 2 network calls per image)."""


@dataclass(frozen=True, kw_only=True)
class SamplerSettings:
    """How to sample: ``S`` samples, ``K`` DDIM steps, the last ``Ts`` fused (defaults S = 15, K = Ts = 10).

    ``fusion`` ``None`` picks the variant's own (Diff-UNet 2D: uncertainty-weighted; others: exponential).
    ``precision`` is the network's arithmetic: ``auto`` takes bfloat16 where the hardware runs it fast (CPUs
    with AVX512-BF16 or AMX, CUDA GPUs with bf16) and float32 elsewhere; the sampler's own arithmetic (DDIM
    updates, fusion, entropy) stays float32 either way. ``backend`` runs the denoiser in PyTorch or OpenVINO;
    ``auto`` takes OpenVINO on a CPU where it is installed (about 1.8x faster per pass there), else PyTorch.

    ``preseg_steps`` (``T_pre``, with a presegmenter): the presegmentation is noised to ``T_pre`` and refined
    from there in :meth:`refine_steps` DDIM steps (one per 15 noise steps, at most ``num_steps``: 2 at
    ``T_pre = 30``, measured as accurate as 3 and 10 there); ``T_pre = 0`` returns the presegmenter's own mask.
    """

    num_samples: int = 15
    num_steps: int = 10
    fuse_steps: int = 10
    eta: float = 0.0
    fusion: Literal["exp", "uncertainty"] | None = None
    seed: int = 0
    images_per_batch: int = 1
    precision: Precision = "auto"
    backend: Backend = "auto"
    preseg_steps: int | None = None

    def __post_init__(self) -> None:
        if self.preseg_steps is not None and not 0 <= self.preseg_steps < 1000:
            raise ValueError(f"preseg_steps (T_pre) must lie in 0..999, got {self.preseg_steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.num_samples < 1 or self.num_steps < 1 or self.images_per_batch < 1:
            raise ValueError("num_samples, num_steps and images_per_batch must be positive")
        if not 1 <= self.fuse_steps <= self.num_steps:
            raise ValueError(f"fuse_steps must lie in 1..num_steps ({self.num_steps}), got {self.fuse_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def refine_steps(self) -> int:
        """DDIM steps of a refinement from ``T_pre``: ``ceil(T_pre / 15)``, between 1 and ``num_steps``."""
        if not self.preseg_steps:
            return 0
        return max(1, min(self.num_steps, -(-self.preseg_steps // REFINE_STRIDE)))
