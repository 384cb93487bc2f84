"""A training run's settings: one frozen dataclass per concern, composed by :class:`TrainConfig`.

Sections (and the keys each holds):

* ``folds`` (:class:`~spinesegdiff.data.folds.FoldSettings`): which patients train, validate and test;
* ``optimisation`` (:class:`OptimisationSettings`): epochs, batches, AdamW, learning rate, EMA, seed;
* ``scheduler`` (:class:`~spinesegdiff.diffusion.SchedulerConfig`): the noise schedule;
* ``validation`` (:class:`ValidationSettings`): how often and how the EMA network is validated;
* ``refinement`` (:class:`RefinementSettings`): fine-tuning start and presegmentation refinement;
* ``runtime`` (:class:`RuntimeSettings`): device, mixed precision, wall-time budget, CPU threads;
* ``augment`` (:class:`~spinesegdiff.data.augment.AugmentConfig`): data augmentation;
* ``network`` (:class:`NetworkSettings`): which network to build.

The saved form (``config.json``, a checkpoint's ``train_config``) is nested by section. The reader,
:meth:`TrainConfig.from_dict`, also takes the flat form written before the sections (the shipped models' and
older config files): every key of a section except ``augment`` is unique across sections, so a flat key names its
section (:data:`FLAT_KEYS`); the one addition is that a flat ``seed`` is also the validation seed of the folds,
as it always was. Unknown keys are a ``ValueError`` naming them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spinesegdiff.data.augment import AugmentConfig
from spinesegdiff.data.folds import FoldSettings
from spinesegdiff.devices import DEVICE_CHOICES
from spinesegdiff.diffusion import SchedulerConfig
from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.models import ModelConfig, preset_config
from spinesegdiff.training.losses import DEFAULT_MAX_NOISE_WEIGHT
from spinesegdiff.training.lr_schedule import LR_SCHEDULES, LrSchedule


@dataclass(frozen=True, kw_only=True)
class OptimisationSettings:
    """AdamW on ``batch_size`` slices per step for ``epochs`` epochs; the weights are averaged by an EMA.

    ``lr_schedule`` ``cosine`` decays the learning rate to 2 % of ``lr`` after ``warmup_steps`` linear warm-up
    steps; ``seed`` seeds the initial weights, the batches, the augmentation and the validation sampler.
    ``min_snr_gamma`` (noise-predicting models, IISDM): weight each sample's loss by Min-SNR-gamma
    (:func:`~spinesegdiff.training.losses.min_snr_weights`; ``None``: plain MSE); with it, ``snr_floor`` also
    raises the x0 weight of the noisy steps to that floor (truncated SNR), the noise weight capped at
    ``max_noise_weight``. ``high_noise_share`` (diffusion training from the truth): that share of each batch
    draws its step from the noisier half of the schedule, ``[T/2, T)``, the rest from all of it (more
    high-noise samples, where a noise-predicting model must learn to read the image; 0: uniform).
    """

    epochs: int = 300
    batch_size: int = 4
    lr: float = 1e-4
    lr_schedule: LrSchedule = "constant"
    warmup_steps: int = 0
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    min_snr_gamma: float | None = None
    snr_floor: float | None = None
    max_noise_weight: float = DEFAULT_MAX_NOISE_WEIGHT
    high_noise_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.high_noise_share <= 1.0:
            raise ValueError(f"high_noise_share must lie in [0, 1], got {self.high_noise_share}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive (or null), got {self.min_snr_gamma}")
        if self.snr_floor is not None and (self.min_snr_gamma is None or not 0 < self.snr_floor < self.min_snr_gamma):
            raise ValueError(f"snr_floor must lie in (0, min_snr_gamma) and needs min_snr_gamma, got {self.snr_floor}")
        if not self.max_noise_weight >= 1:
            raise ValueError(f"max_noise_weight must be at least 1, got {self.max_noise_weight}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be positive")
        if self.lr <= 0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("lr must be positive and ema_decay in [0, 1)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("warmup_steps, weight_decay and grad_clip must not be negative")


@dataclass(frozen=True, kw_only=True)
class ValidationSettings:
    """Every ``val_every`` epochs the EMA network segments the validation slices with ``val_samples`` samples of
    ``val_steps`` DDIM steps, the last ``val_fuse_steps`` fused."""

    val_every: int = 10
    val_samples: int = 3
    val_steps: int = 10
    val_fuse_steps: int = 5

    def __post_init__(self) -> None:
        if min(self.val_every, self.val_samples, self.val_steps, self.val_fuse_steps) < 1:
            raise ValueError("val_every, val_samples, val_steps and val_fuse_steps must be positive")


@dataclass(frozen=True, kw_only=True)
class RefinementSettings:
    """Where the weights start, and presegmentation refinement training.

    ``init_from`` starts from a checkpoint's EMA weights (fine-tuning). With ``preseg_models`` (diffusion
    variants), each training slice is presegmented on the fly, after augmentation, by a built-in U-Net that never
    trained on its patient (cross-fitting); that mask, noised to ``t``, replaces the noised ground truth, and the
    target stays the ground truth. ``t`` is drawn uniformly from ``[0, preseg_focus_timestep]`` with probability
    ``preseg_focus_share`` and from ``[0, preseg_max_timestep]`` otherwise, so one model refines from any
    ``T_pre`` and is best at the focus.
    """

    init_from: str | None = None
    preseg_models: tuple[str, ...] = ()
    preseg_max_timestep: int = 999
    preseg_focus_timestep: int = 30
    preseg_focus_share: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "preseg_models", tuple(str(p) for p in self.preseg_models))
        if not 0 <= self.preseg_focus_timestep <= self.preseg_max_timestep:
            raise ValueError("need 0 <= preseg_focus_timestep <= preseg_max_timestep")
        if not 0.0 <= self.preseg_focus_share <= 1.0:
            raise ValueError(f"preseg_focus_share must lie in [0, 1], got {self.preseg_focus_share}")


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """Where and how fast: ``device``, bfloat16 autocast on CUDA (``amp``), a wall-time budget after which the run
    validates, saves and stops (``max_minutes``), and the PyTorch CPU threads (set by the command line)."""

    device: str = "auto"
    amp: bool = True
    max_minutes: float | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.device not in DEVICE_CHOICES:
            raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {self.device!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be positive, got {self.threads}")


@dataclass(frozen=True, kw_only=True)
class NetworkSettings:
    """The network: a ``preset`` size of a ``variant``, or a full ``model`` configuration (which then wins)."""

    preset: str = "compact"
    variant: str = "spinesegdiff"
    model: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.model_config()  # unknown presets, variants and model keys fail here

    def model_config(self) -> ModelConfig:
        if self.model is not None:
            return ModelConfig.from_dict(self.model)
        return preset_config(self.preset, variant=self.variant)  # type: ignore[arg-type]


SECTIONS: dict[str, type] = {
    "folds": FoldSettings, "optimisation": OptimisationSettings, "scheduler": SchedulerConfig,
    "validation": ValidationSettings, "refinement": RefinementSettings, "runtime": RuntimeSettings,
    "augment": AugmentConfig, "network": NetworkSettings,
}
"""Section name -> its dataclass, in the order of :class:`TrainConfig`."""


def _flat_keys() -> dict[str, str]:
    keys: dict[str, str] = {"augment": "augment"}
    for section, kind in SECTIONS.items():
        if section == "augment":
            continue
        for item in dataclasses.fields(kind):
            if item.name in keys or item.name in SECTIONS or item.name in ("data", "out"):
                raise RuntimeError(f"flat training setting {item.name!r} is not unique")
            keys[item.name] = section
    return keys


FLAT_KEYS: dict[str, str] = _flat_keys()
"""Flat key (the pre-section form, and the command-line flags) -> its section; ``augment`` is a whole section."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on; saved (nested) in the run folder and in every checkpoint.

    ``data`` is a cache or SPIDER folder, ``out`` the run folder; the sections are described in the module
    docstring. Build one from saved or flat settings with :meth:`from_dict`, from a file and command-line flags
    with :func:`make_train_config`.
    """

    data: str
    out: str
    folds: FoldSettings = field(default_factory=FoldSettings)
    optimisation: OptimisationSettings = field(default_factory=OptimisationSettings)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    refinement: RefinementSettings = field(default_factory=RefinementSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    network: NetworkSettings = field(default_factory=NetworkSettings)

    def __post_init__(self) -> None:
        for name, kind in SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if self.refinement.preseg_max_timestep >= self.scheduler.num_train_timesteps:
            raise ValueError("need preseg_max_timestep < num_train_timesteps")

    def model_config(self) -> ModelConfig:
        return self.network.model_config()

    def to_dict(self) -> dict[str, Any]:
        """The nested form: ``{"data", "out", "folds": {...}, "optimisation": {...}, ...}``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Read the nested form, the flat form of older runs, or a mixture.

        Raises:
            ValueError: unknown keys (named), invalid values, or no ``data`` and ``out``.
        """
        return _build(_sectioned(data))


def _sectioned(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Settings grouped by section (``""``: ``data`` and ``out``), from the nested or the flat form."""
    if not isinstance(data, Mapping):
        raise ValueError(f"training settings are a mapping, got {type(data).__name__}")
    grouped: dict[str, dict[str, Any]] = {"": {}, **{name: {} for name in SECTIONS}}
    unknown = []
    for key, value in data.items():
        if key in ("data", "out"):
            grouped[""][key] = value
        elif key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ValueError(f"the {key} section must be a mapping of settings, got {value!r}")
            grouped[key].update(value)
        elif key in FLAT_KEYS:
            grouped[FLAT_KEYS[key]][key] = value
        else:
            unknown.append(str(key))
    if unknown:
        raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
    if "seed" in data and "val_seed" not in grouped["folds"]:
        grouped["folds"]["val_seed"] = data["seed"]  # the flat form's seed chose the validation patients too
    return grouped


def _section(kind: type, name: str, values: Mapping[str, Any]) -> Any:
    names = {item.name for item in dataclasses.fields(kind)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {name} settings: {', '.join(map(str, unknown))}")
    return kind(**values)


def _build(grouped: dict[str, dict[str, Any]]) -> TrainConfig:
    top = grouped[""]
    if "data" not in top or "out" not in top:
        raise ValueError("the training settings need data and out")
    folds = dict(grouped["folds"])
    folds.setdefault("val_seed", grouped["optimisation"].get("seed", 0))
    fold = folds.get("fold")
    if fold == "all":
        folds["fold"] = -1
    elif isinstance(fold, str) and fold.lstrip("-").isdigit():
        folds["fold"] = int(fold)
    sections = {name: _section(kind, name, folds if name == "folds" else grouped[name])
                for name, kind in SECTIONS.items()}
    return TrainConfig(data=str(top["data"]), out=str(top["out"]), **sections)


def load_train_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON file: nested by section, or flat (older files); a run's ``config.json`` is read
    through its ``train`` object."""
    path = Path(path)
    if not path.is_file():
        raise SpineSegDiffError(f"{path}: no such config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(path, f"not a JSON file ({err})") from err
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object of training settings")
    return data.get("train", data)


def make_train_config(config_file: str | Path | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """The command line's settings: a config file (or none), then the flags given, by their flat names.

    ``overrides`` holds flat keys (:data:`FLAT_KEYS`, ``data``, ``out``); ``None`` values are flags not given.
    ``fold`` may read ``"all"`` (every case trains), ``holdout_patients`` may be a comma-separated string.

    Raises:
        SpineSegDiffError: unreadable file or invalid settings (the message says which).
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    if isinstance(given.get("holdout_patients"), str):
        given["holdout_patients"] = [p.strip() for p in given["holdout_patients"].split(",") if p.strip()]
    try:
        grouped = _sectioned(load_train_config_file(config_file) if config_file else {})
        for name, values in _sectioned(given).items():
            grouped[name].update(values)
        return _build(grouped)
    except (TypeError, ValueError) as err:
        raise SpineSegDiffError(f"invalid training settings: {err}") from err
