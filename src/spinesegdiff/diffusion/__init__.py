"""Noise schedules and the DDIM sampler step: the noise maths of SpineSegDiff, with no weights and no network.

The forward process is ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` on masks ``x0`` in ``[-1, 1]``
(one-hot * 2 - 1). :func:`make_schedule` builds the linear (paper) or cosine (reference code, presegmentation)
schedule, :class:`SchedulerConfig` names it (saved in every checkpoint); :class:`DDIMScheduler` walks it backwards.

The names below are imported on first use (PEP 562), so :mod:`spinesegdiff.diffusion.config` and its registry
``SCHEDULE_KINDS`` can be read without importing torch (the command line's ``--help`` does).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "SCHEDULE_KINDS": "config",
    "SchedulerConfig": "config",
    "DDIMScheduler": "ddim",
    "DDIMStepOutput": "ddim",
    "NoiseSchedule": "schedules",
    "add_noise": "schedules",
    "make_schedule": "schedules",
}

__all__ = [
    "SCHEDULE_KINDS",
    "DDIMScheduler",
    "DDIMStepOutput",
    "NoiseSchedule",
    "SchedulerConfig",
    "add_noise",
    "make_schedule",
]

if TYPE_CHECKING:
    from spinesegdiff.diffusion.config import SCHEDULE_KINDS, SchedulerConfig
    from spinesegdiff.diffusion.ddim import DDIMScheduler, DDIMStepOutput
    from spinesegdiff.diffusion.schedules import NoiseSchedule, add_noise, make_schedule


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
