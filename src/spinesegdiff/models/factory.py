"""Build a network from a :class:`ModelConfig` and say what it predicts."""

from __future__ import annotations

from typing import Literal

from torch import nn

from spinesegdiff.models.config import ModelConfig
from spinesegdiff.models.iisdm_net import IISDMNet
from spinesegdiff.models.segmentation_unet import SegmentationUNet
from spinesegdiff.models.spinesegdiff_net import SpineSegDiffNet
from spinesegdiff.models.spinesegdiff_net3d import SpineSegDiffNet3d


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised network for ``config.variant``.

    ``spinesegdiff``, ``diffunet2d`` and ``spinesegdiff_no_ie`` give a :class:`SpineSegDiffNet` (mask logits),
    ``diffunet3d`` a :class:`SpineSegDiffNet3d` (mask logits on slabs), ``iisdm`` an :class:`IISDMNet` (noise);
    all are called as ``net(x_t, t, image=y)``. ``unet`` gives a :class:`SegmentationUNet`, called as ``net(y)``
    (class logits).
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    if config.spatial_dims == 3:
        return SpineSegDiffNet3d(config)
    if config.variant == "iisdm":
        return IISDMNet(config)
    if config.variant == "unet":
        return SegmentationUNet(config)
    return SpineSegDiffNet(config)


def is_diffusion_model(config: ModelConfig) -> bool:
    """Whether the variant is a diffusion model (sampled with DDIM) rather than a direct segmenter."""
    return config.variant != "unet"


def model_prediction_type(config: ModelConfig) -> Literal["sample", "epsilon"]:
    """``"epsilon"`` for IISDM (predicts noise), ``"sample"`` for the others (predict ``x0`` as logits)."""
    return "epsilon" if config.variant == "iisdm" else "sample"


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
