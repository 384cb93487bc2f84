"""What the in-process ``spinesegdiff predict`` tests share: a tiny untrained model, phantom scans, and the CLI
run in this process with its output captured (tests/test_predict_inputs.py, tests/test_cohorts.py)."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import numpy as np

from spinesegdiff.data.io import write_image
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.models import ModelConfig, build_model
from spinesegdiff.models.checkpoint import save_checkpoint

FAST = ["--samples", "1", "--steps", "1", "--fuse-steps", "1", "--backend", "torch", "--device", "cpu"]
SHAPE = {"shape": (3, 160, 120), "spacing": (1.5, 1.5, 3.0)}


def tiny_checkpoint(path: Path, num_train_timesteps: int = 1000, seed: int = 0) -> Path:
    """An untrained tiny network: fast, for which scans run and where outputs go (not for what they hold).

    Its weights come from ``seed`` alone, not from the global random state, so a test sees the same network
    whichever tests ran before it.
    """
    import torch

    config = ModelConfig(variant="spinesegdiff", widths=(8, 8, 16), time_embed_dim=32, patch_size=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(config)
    save_checkpoint(path, {"model_config": config.to_dict(), "train_config": {"schedule": "linear"},
                           "scheduler": {"schedule": "linear", "num_train_timesteps": num_train_timesteps},
                           "model": net.state_dict(), "ema": net.state_dict()})
    return path


def write_scan(path: Path, seed: int = 0) -> Path:
    """A phantom sagittal scan of :data:`SHAPE`, written to ``path``."""
    phantom = make_phantom(seed=seed, **SHAPE)
    write_image(path, (phantom.image * 800).astype(np.int16), phantom.geometry)
    return path


def switch_off_spine_judgement(monkeypatch) -> None:
    """The untrained network draws no spine; the judgement of a result is tested in tests/test_scan_checks.py."""
    import spinesegdiff.pipelines.predict as predict_module

    monkeypatch.setattr(predict_module, "check_spine_quality", lambda *args, **kwargs: None, raising=False)


def predict(*args: str) -> subprocess.CompletedProcess:
    """``spinesegdiff predict ARGS`` in this process."""
    from spinesegdiff.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(["predict", *args])
        except SystemExit as exit_:
            code = exit_.code
    return subprocess.CompletedProcess(["spinesegdiff", "predict", *args], code, stdout.getvalue(), stderr.getvalue())
