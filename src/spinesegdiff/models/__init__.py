"""Networks of SpineSegDiff and its baselines: plain ``nn.Module``s that know nothing of noise schedules.

Every network is called as ``net(x_t, t, image=y, image_features=None)`` with the image ``y`` in ``[-1, 1]``
and the noisy mask ``x_t``; :func:`model_prediction_type` says whether the output is ``x0`` logits or noise.
"""

from spinesegdiff.models.config import (
    DIFFUSION_VARIANTS,
    NORMS,
    PRESETS,
    VARIANTS,
    ModelConfig,
    preset_config,
)
from spinesegdiff.models.factory import (
    build_model,
    count_parameters,
    is_diffusion_model,
    model_prediction_type,
)
from spinesegdiff.models.iisdm_net import IISDMNet
from spinesegdiff.models.segmentation_unet import SegmentationUNet
from spinesegdiff.models.spinesegdiff_net import ImageEncoder, SpineSegDiffNet

__all__ = [
    "DIFFUSION_VARIANTS",
    "NORMS",
    "PRESETS",
    "VARIANTS",
    "IISDMNet",
    "ImageEncoder",
    "ModelConfig",
    "SegmentationUNet",
    "SpineSegDiffNet",
    "build_model",
    "count_parameters",
    "is_diffusion_model",
    "model_prediction_type",
    "preset_config",
]
