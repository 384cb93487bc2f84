"""Model configuration: one frozen dataclass, saved as JSON beside every checkpoint, and named presets.

Variants (``ModelConfig.variant``):

===================== ===================================================== ===================
variant               network                                               predicts
===================== ===================================================== ===================
``spinesegdiff``      dual encoder: denoising U-Net + image encoder (IE)    ``x0`` (mask logits)
``spinesegdiff_no_ie`` the same denoising U-Net without the IE               ``x0`` (mask logits)
``diffunet2d``        identical to ``spinesegdiff`` (Diff-UNet 2D differs   ``x0`` (mask logits)
                      only in its uncertainty-weighted fusion at sampling)
``diffunet3d``        the dual encoder with 3D convolutions, on sagittal    ``x0`` (mask logits)
                      slabs ``(D, H, W)`` (:mod:`.spinesegdiff_net3d`)
``iisdm``             guided-diffusion-style U-Net (Wolleb et al.)          ``eps`` (noise)
``unet``              plain segmentation U-Net on the image alone (no       class logits (4)
                      diffusion): the built-in presegmenter and baseline
===================== ===================================================== ===================

Presets (:func:`preset_config`) with the default 1 image and 3 mask channels; times are one forward pass on a
1 x 320 x 320 image with the image-encoder features precomputed, on the development machine (2 CPU threads,
``torch.inference_mode``, float32, median of 3 runs); batch 15 is one DDIM step of ``S = 15`` samples:

* ``paper``: widths ``(64, 64, 128, 256, 512)``, time embedding 512, the reference network of the paper
  (about 13.8 M parameters there). SpineSegDiff / Diff-UNet 2D: 14.31 M parameters (the 1x1 residual
  shortcuts account for the difference); denoiser 0.67 s at batch 1, 14.6 s at batch 15; image encoder
  0.22 s. A 50-step, 15-sample segmentation therefore costs about 12 minutes per image on such a CPU.
  Without IE: 9.38 M. IISDM: widths ``(128, 128, 256, 256, 512, 512)`` (128 channels, multipliers
  1, 1, 2, 2, 4, 4, two residual blocks, attention at 1/16 resolution): 113.7 M parameters.
* ``compact``: widths ``(24, 48, 64, 96, 128)``, time embedding 128, ``patch_size`` 2 (a 2 x 2
  pixel-unshuffle stem: the U-Net works at 160 x 160 and the output is pixel-shuffled back): 1.71 M
  parameters; denoiser 0.042 s at batch 1, 0.98 s at batch 15 in float32, 0.40 s at batch 15 in bfloat16;
  one training step at batch 4 about 0.65 s. Chosen against these, measured the same way (training step at
  batch 4 / batch-15 pass): widths ``(16, 32, 64, 128, 128)`` without the stem 1.41 s / 2.2 s;
  ``(32, 64, 96, 128, 128)`` with the stem 0.75 s / 0.80 s; ``(48, 64, 96, 128)`` with a 4 x 4 stem 0.31 s /
  0.28 s (untrained: its quality on discs is unknown). IISDM compact: widths ``(32, 32, 64, 64, 128, 128)``,
  7.13 M parameters, with the same 2 x 2 stem: one training step at batch 4 took 2.3 s (1 thread, sharing the
  CPU with a training) against 16.6 s without the stem, which would have left a 35-minute CPU budget a few
  hundred steps.
* ``tiny``: widths ``(8, 8, 16, 16)`` for tests (inputs divisible by 8).

Diff-UNet 3D (``diffunet3d``) works on slabs of ``D`` sagittal slices (9 at 1 mm, 320 x 320 each); its levels
pool in-plane only, so ``patch_size`` and the divisibility rule concern ``H`` and ``W`` and any ``D`` works.
Its ``paper`` and ``tiny`` presets take the 2D widths (3x3x3 convolutions make ``paper`` far too slow for a
CPU). ``compact`` (:data:`COMPACT_SLAB_PRESET`): widths ``(24, 48, 64, 96)``, time embedding 128, a 4 x 4
in-plane stem (the U-Net works at 9 x 80 x 80): 2.20 M parameters. Measured with 1 thread on the 2-core
development machine while two trainings shared it, on 1 x 9 x 320 x 320 slabs: one training step at batch 2
3.8 s (``spinesegdiff train``), a batch-15 denoiser pass about 12 s, a 15-sample 10-step segmentation 162 s
per slab. Chosen against, timed back to back under the same load (training step at batch 2 / batch-15
pass): widths ``(16, 32, 48, 64)`` with a 2 x 2 stem (1.09 M parameters) 11 s / 23 s; ``(32, 48, 64, 96)``
with the 4 x 4 stem 7.0 s / 15 s against 5.6 s / 12 s for the chosen one.

The ``unet`` variant takes the same widths and stem per preset, without time embedding or image encoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Variant = Literal["spinesegdiff", "spinesegdiff_no_ie", "diffunet2d", "diffunet3d", "iisdm", "unet"]
VARIANTS: tuple[str, ...] = ("spinesegdiff", "spinesegdiff_no_ie", "diffunet2d", "diffunet3d", "iisdm", "unet")
DIFFUSION_VARIANTS: tuple[str, ...] = ("spinesegdiff", "spinesegdiff_no_ie", "diffunet2d", "diffunet3d", "iisdm")
SLAB_VARIANTS: tuple[str, ...] = ("diffunet3d",)
"""Variants whose networks take sagittal slabs ``(B, C, D, H, W)`` instead of slices ``(B, C, H, W)``."""
PRESETS: tuple[str, ...] = ("paper", "compact", "tiny")
NORMS: tuple[str, ...] = ("instance", "group")
COMPACT_SLAB_PRESET: dict[str, Any] = {"widths": (24, 48, 64, 96), "time_embed_dim": 128, "patch_size": 4}
"""The ``compact`` preset of the slab variants (see the module docstring for its size and speed)."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to rebuild a network (see :func:`spinesegdiff.models.build_model`).

    Attributes:
        variant: one of :data:`VARIANTS`.
        image_channels: channels of the MRI image ``y`` (1).
        mask_channels: channels of the mask ``x_t`` and of the output (3: SC, VB, IVD).
        widths: feature channels per resolution level, finest first; the depth is ``len(widths)`` and the
            input height and width must be divisible by ``2 ** (len(widths) - 1)``. For ``iisdm`` the widths
            are ``model_channels * channel_mult``.
        time_embed_dim: width of the timestep embedding MLP output; the sinusoidal embedding has
            ``time_embed_dim // 4`` features (must be a multiple of 8).
        norm: ``"instance"`` (affine instance norm, SpineSegDiff) or ``"group"`` (group norm with up to 32
            groups, guided diffusion).
        negative_slope: LeakyReLU slope of the SpineSegDiff blocks (0.1); IISDM uses SiLU.
        dropout: dropout probability inside the residual blocks.
        num_res_blocks: residual blocks per level of the IISDM U-Net (ignored by the other variants).
        attention_levels: level indices (0 = full resolution) with self-attention in the IISDM U-Net; its
            middle block always has attention (ignored by the other variants).
        num_heads: attention heads of the IISDM U-Net.
        noise_skip: IISDM only: add ``x_t`` to the predicted noise through a 1 x 1 convolution initialised to the
            identity, so the U-Net body learns only ``eps - x_t`` (see :class:`~.iisdm_net.IISDMNet`).
        patch_size: ``p`` > 1 folds each ``p x p`` patch into channels before the first level
            (``PixelUnshuffle``) and unfolds the output (``PixelShuffle``), so the network works at ``1 / p``
            resolution without discarding a pixel: the CPU presets use 2.
    """

    variant: Variant = "spinesegdiff"
    image_channels: int = 1
    mask_channels: int = 3
    widths: tuple[int, ...] = (64, 64, 128, 256, 512)
    time_embed_dim: int = 512
    norm: str = "instance"
    negative_slope: float = 0.1
    dropout: float = 0.0
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = ()
    num_heads: int = 4
    patch_size: int = 1
    noise_skip: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        for name in ("image_channels", "mask_channels", "num_res_blocks", "num_heads", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        widths = tuple(self.widths)
        if len(widths) < 2 or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
            raise ValueError(f"widths must hold at least two positive integers, got {self.widths!r}")
        object.__setattr__(self, "widths", widths)
        if not isinstance(self.time_embed_dim, int) or self.time_embed_dim < 8 or self.time_embed_dim % 8:
            raise ValueError(f"time_embed_dim must be a positive multiple of 8, got {self.time_embed_dim!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not self.negative_slope >= 0.0:
            raise ValueError(f"negative_slope must be non-negative, got {self.negative_slope}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        levels = tuple(self.attention_levels)
        if any(not isinstance(level, int) or not 0 <= level < len(widths) for level in levels):
            raise ValueError(f"attention_levels must be level indices in [0, {len(widths)}), got {levels!r}")
        object.__setattr__(self, "attention_levels", levels)
        if not isinstance(self.noise_skip, bool):
            raise ValueError(f"noise_skip must be true or false, got {self.noise_skip!r}")
        if self.noise_skip and self.variant != "iisdm":
            raise ValueError(f"noise_skip applies to the noise-predicting variant 'iisdm', not {self.variant!r}")
        if self.variant == "iisdm":
            for level in (*levels, len(widths) - 1):
                if widths[level] % self.num_heads:
                    raise ValueError(
                        f"widths[{level}] = {widths[level]} must be divisible by num_heads = {self.num_heads}"
                    )

    @property
    def depth(self) -> int:
        """Number of resolution levels."""
        return len(self.widths)

    @property
    def size_divisor(self) -> int:
        """Input height and width must be multiples of this (``patch_size * 2 ** (depth - 1)``)."""
        return self.patch_size * 2 ** (len(self.widths) - 1)

    @property
    def spatial_dims(self) -> int:
        """3 for the slab variants (:data:`SLAB_VARIANTS`, inputs ``(B, C, D, H, W)``), else 2."""
        return 3 if self.variant in SLAB_VARIANTS else 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists)."""
        return {
            field.name: list(value) if isinstance(value := getattr(self, field.name), tuple) else value
            for field in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ValueError`` naming them."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {', '.join(unknown)}")
        values = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        return cls(**values)


def preset_config(name: str, variant: Variant = "spinesegdiff") -> ModelConfig:
    """A named configuration (see the module docstring for sizes and timings).

    Args:
        name: ``"paper"``, ``"compact"`` or ``"tiny"``.
        variant: one of :data:`VARIANTS`.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "iisdm":
        iisdm = {
            "paper": {
                "widths": (128, 128, 256, 256, 512, 512),
                "time_embed_dim": 512,
                "attention_levels": (4,),
            },
            "compact": {
                "widths": (32, 32, 64, 64, 128, 128),
                "time_embed_dim": 128,
                "attention_levels": (4,),
                "patch_size": 2,
            },
            "tiny": {
                "widths": (8, 8, 16, 16),
                "time_embed_dim": 32,
                "attention_levels": (2,),
                "num_res_blocks": 1,
            },
        }[name]
        return ModelConfig(variant=variant, norm="group", num_heads=4 if name != "tiny" else 2, **iisdm)
    dual = {
        "paper": {"widths": (64, 64, 128, 256, 512), "time_embed_dim": 512},
        "compact": {"widths": (24, 48, 64, 96, 128), "time_embed_dim": 128, "patch_size": 2},
        "tiny": {"widths": (8, 8, 16, 16), "time_embed_dim": 32},
    }[name]
    if variant in SLAB_VARIANTS and name == "compact":
        dual = COMPACT_SLAB_PRESET
    return ModelConfig(variant=variant, **dual)
