"""Networks of SpineSegDiff and its baselines: plain ``nn.Module``s that know nothing of noise schedules.

Every network is called as ``net(x_t, t, image=y, image_features=None)`` with the image ``y`` in ``[-1, 1]``
and the noisy mask ``x_t``; :func:`model_prediction_type` says whether the output is ``x0`` logits or noise.

The names below are imported on first use (PEP 562), so ``spinesegdiff.models.config`` and its registries
(``PRESETS``, ``VARIANTS``) can be read without importing torch (the command line's ``--help`` does).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "DIFFUSION_VARIANTS": "config",
    "NORMS": "config",
    "PRESETS": "config",
    "SLAB_VARIANTS": "config",
    "VARIANTS": "config",
    "ModelConfig": "config",
    "preset_config": "config",
    "build_model": "factory",
    "count_parameters": "factory",
    "is_diffusion_model": "factory",
    "model_prediction_type": "factory",
    "IISDMNet": "iisdm_net",
    "SegmentationUNet": "segmentation_unet",
    "ImageEncoder": "spinesegdiff_net",
    "SpineSegDiffNet": "spinesegdiff_net",
    "SpineSegDiffNet3d": "spinesegdiff_net3d",
}

__all__ = [
    "DIFFUSION_VARIANTS",
    "NORMS",
    "PRESETS",
    "SLAB_VARIANTS",
    "VARIANTS",
    "IISDMNet",
    "ImageEncoder",
    "ModelConfig",
    "SegmentationUNet",
    "SpineSegDiffNet",
    "SpineSegDiffNet3d",
    "build_model",
    "count_parameters",
    "is_diffusion_model",
    "model_prediction_type",
    "preset_config",
]

if TYPE_CHECKING:
    from spinesegdiff.models.config import (
        DIFFUSION_VARIANTS,
        NORMS,
        PRESETS,
        SLAB_VARIANTS,
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
    from spinesegdiff.models.spinesegdiff_net3d import SpineSegDiffNet3d


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
