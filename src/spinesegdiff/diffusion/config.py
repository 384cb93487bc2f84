"""The scheduler configuration saved beside every network's weights, and the schedule kinds (no torch here).

Kept apart from :mod:`spinesegdiff.diffusion.schedules` so that the command line can offer the schedule kinds
(``--schedule``) without importing torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from spinesegdiff.diffusion.schedules import NoiseSchedule

ScheduleKind = Literal["linear", "cosine"]
SCHEDULE_KINDS: tuple[str, ...] = ("linear", "cosine")


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """The noise schedule a network was trained with, saved beside its weights (``"scheduler"`` in a checkpoint).

    Like a diffusers scheduler config, it is all that is needed to rebuild the schedule the network expects;
    the prediction type comes from the model configuration.

    Attributes:
        schedule: ``"linear"`` (the paper) or ``"cosine"`` (the reference code, presegmentation refinement).
        num_train_timesteps: ``T``.
    """

    schedule: ScheduleKind = "linear"
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"schedule must be one of {SCHEDULE_KINDS}, got {self.schedule!r}")
        if isinstance(self.num_train_timesteps, bool) or not isinstance(self.num_train_timesteps, int) \
                or self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive integer, got {self.num_train_timesteps!r}")

    def noise_schedule(self) -> NoiseSchedule:
        """The :class:`~spinesegdiff.diffusion.schedules.NoiseSchedule` this configuration describes."""
        from spinesegdiff.diffusion.schedules import make_schedule

        return make_schedule(self.schedule, num_train_timesteps=self.num_train_timesteps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SchedulerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ValueError`` naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a scheduler configuration is a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown scheduler settings: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_train_settings(cls, settings: Mapping[str, Any] | None) -> SchedulerConfig:
        """The schedule named in saved training settings (their ``scheduler`` section, or the flat ``schedule``
        and ``num_train_timesteps`` keys of older runs); ``None`` or empty settings (a network built in code)
        give the default linear schedule of ``T = 1000``.

        Raises:
            ValueError: settings that name no schedule.
        """
        if not settings:
            return cls()
        if isinstance(settings.get("scheduler"), Mapping):
            return cls.from_dict(settings["scheduler"])
        if "schedule" not in settings:
            raise ValueError("the training settings name no noise schedule")
        return cls(schedule=settings["schedule"], num_train_timesteps=settings.get("num_train_timesteps", 1000))
