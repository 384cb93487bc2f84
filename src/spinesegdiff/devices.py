"""Device choice: ``auto`` takes CUDA when there is a GPU and says so, never CUDA by default otherwise."""

from __future__ import annotations

import sys
from typing import Literal

DeviceChoice = Literal["auto", "cpu", "cuda"]
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(choice: str = "auto", *, quiet: bool = False):
    """``auto`` -> ``cuda`` if available else ``cpu``; ``cuda`` without a GPU is an error.

    Returns:
        a ``torch.device``.
    """
    import torch

    from spinesegdiff.errors import SpineSegDiffError

    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise SpineSegDiffError("--device cuda was asked for, but PyTorch sees no CUDA GPU (use --device auto or cpu)")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
        if not quiet and choice == "cpu":
            print("spinesegdiff: no CUDA GPU found, running on the CPU", file=sys.stderr)
    return torch.device(choice)
