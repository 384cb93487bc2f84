"""Noise schedules and the DDIM sampler step: the noise maths of SpineSegDiff, with no weights and no network.

The forward process is ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` on masks ``x0`` in ``[-1, 1]``
(one-hot * 2 - 1). :func:`make_schedule` builds the linear (paper) or cosine (reference code, presegmentation)
schedule, :class:`SchedulerConfig` names it (saved in every checkpoint); :class:`DDIMScheduler` walks it backwards.
"""

from spinesegdiff.diffusion.ddim import DDIMScheduler, DDIMStepOutput
from spinesegdiff.diffusion.schedules import (
    SCHEDULE_KINDS,
    NoiseSchedule,
    SchedulerConfig,
    add_noise,
    make_schedule,
)

__all__ = [
    "SCHEDULE_KINDS",
    "DDIMScheduler",
    "DDIMStepOutput",
    "NoiseSchedule",
    "SchedulerConfig",
    "add_noise",
    "make_schedule",
]
