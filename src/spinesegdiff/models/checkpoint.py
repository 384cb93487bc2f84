"""Checkpoints: model, EMA and optimiser state, step, and the full configuration, written atomically.

A checkpoint is a ``torch.save`` dictionary with the keys ``format`` (:data:`CHECKPOINT_FORMAT`),
``model_config``, ``scheduler`` (the :class:`~spinesegdiff.diffusion.SchedulerConfig` the network was trained
with, as diffusers saves a scheduler's config beside the weights), ``train_config``, ``model``, ``ema``,
``optimizer``, ``step``, ``epoch``, ``step_in_epoch``, ``epoch_losses``, ``best_metric``, ``history`` and ``rng``.
Inference needs only ``format``, ``model_config``, ``scheduler`` and ``ema`` (or ``model``), so shipped weights
drop the rest (:func:`export_weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spinesegdiff.diffusion import SchedulerConfig
from spinesegdiff.errors import InputError, MissingInputError
from spinesegdiff.files import atomic_write

CHECKPOINT_FORMAT = "spinesegdiff-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """``torch.save`` through :func:`~spinesegdiff.files.atomic_write`: never a half-written checkpoint."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda temporary: torch.save({"format": CHECKPOINT_FORMAT, **payload}, temporary))


def load_checkpoint(path: str | Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        MissingInputError: no such file.
        InputError: not a spinesegdiff checkpoint (the message names the file).
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(path, "model file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError) as err:
        raise InputError(path, "not a spinesegdiff model file (cannot be read by torch.load)") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "not a spinesegdiff model file (no spinesegdiff checkpoint header)")
    return payload


def checkpoint_scheduler(payload: dict[str, Any], path: str | Path) -> SchedulerConfig:
    """The scheduler configuration saved in a checkpoint read from ``path``.

    Raises:
        InputError: the checkpoint has none (written before checkpoints carried it), or an unreadable one.
    """
    if payload.get("scheduler") is None:
        raise InputError(path, "has no scheduler configuration (written before checkpoints carried one); "
                               "add a 'scheduler' entry, e.g. {'schedule': 'linear', 'num_train_timesteps': 1000}")
    try:
        return SchedulerConfig.from_dict(payload["scheduler"])
    except (TypeError, ValueError) as err:
        raise InputError(path, f"has an unreadable scheduler configuration ({err})") from err


def load_model(path: str | Path, *, use_ema: bool = True, map_location: Any = "cpu"):
    """Rebuild a network from a checkpoint -> ``(model in eval mode, ModelConfig, payload)``.

    Raises:
        MissingInputError, InputError: no such file, not ours, another version's network, or NaN/inf weights.
    """
    from spinesegdiff.models import ModelConfig, build_model

    payload = load_checkpoint(path, map_location=map_location)
    try:
        config = ModelConfig.from_dict(payload["model_config"])
        model = build_model(config)
        state = payload["ema"] if use_ema and payload.get("ema") is not None else payload["model"]
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise InputError(path, f"model file does not match this version of spinesegdiff ({err})") from err
    broken = [name for name, tensor in state.items()
              if hasattr(tensor, "is_floating_point") and tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:
        raise InputError(path, f"model file holds NaN or infinite weights ({len(broken)} tensors, first "
                               f"{broken[0]}); it cannot segment anything")
    return model.eval(), config, payload


def export_weights(checkpoint_path: str | Path, out_path: str | Path, *, half: bool = True,
                   extra: dict[str, Any] | None = None) -> Path:
    """Keep only what inference needs (EMA weights, configs with the scheduler's, metrics), optionally as float16
    to halve the size.

    Raises:
        InputError: the checkpoint has no scheduler configuration.
    """
    payload = load_checkpoint(checkpoint_path)
    scheduler = checkpoint_scheduler(payload, checkpoint_path)
    weights = payload.get("ema") or payload["model"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    slim = {
        "model_config": payload["model_config"],
        "scheduler": scheduler.to_dict(),
        "train_config": payload.get("train_config"),
        "ema": weights,
        "model": None,
        "step": payload.get("step"),
        "epoch": payload.get("epoch"),
        "best_metric": payload.get("best_metric"),
        **(extra or {}),
    }
    return save_checkpoint(out_path, slim)


def resolve_model_file(model: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``best.pt``, else ``last.pt``)."""
    path = Path(model)
    if path.is_dir():
        for name in ("best.pt", "last.pt", "model.pt"):
            if (path / name).is_file():
                return path / name
        raise MissingInputError(path / "best.pt", "model file in the run folder")
    if not path.exists():
        raise MissingInputError(path, "model file")
    return path
