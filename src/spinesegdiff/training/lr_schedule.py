"""The learning-rate schedules of training (no torch here, so the command line can list them without it)."""

from __future__ import annotations

import math
from typing import Literal

LrSchedule = Literal["constant", "cosine"]
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


def learning_rate(step: int, total_steps: int, *, lr: float, schedule: LrSchedule, warmup_steps: int = 0) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    A linear warm-up over ``warmup_steps`` steps reaches ``lr``; then ``constant`` keeps it and ``cosine``
    decays it along half a cosine to 2 % of ``lr`` at ``total_steps``.
    """
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
    return lr
