"""Paths and commands as reports record them: relative to the current folder, so a report reads the same on
every machine (``runs/compact-fold0``, not ``/home/someone/project/runs/compact-fold0``)."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

_SEPARATORS = re.compile(r"([=,:])")


def recorded_path(path: str | Path, base: str | Path | None = None) -> str:
    """``path`` relative to ``base`` (default: the current folder) when it is an absolute path inside it;
    any other path (relative already, or outside ``base``) as given."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    base = Path(base if base is not None else Path.cwd())
    target = Path(os.path.normpath(text))
    for root in (Path(os.path.normpath(base.absolute())), base.resolve()):
        if target == root or root in target.parents:
            return target.relative_to(root).as_posix()
    return text


def recorded_argument(argument: str, base: str | Path | None = None) -> str:
    """One command-line argument with every absolute path in it made relative (:func:`recorded_path`);
    paths inside ``NAME=PATH,preseg=unet:PATH`` specs count as well."""
    if os.path.isabs(argument):
        whole = recorded_path(argument, base)
        if whole != argument:
            return whole
    parts = _SEPARATORS.split(argument)
    return "".join(recorded_path(part, base) if os.path.isabs(part) else part for part in parts)


def recorded_command(arguments: Sequence[str], base: str | Path | None = None) -> str:
    """A command line as a report records it: absolute paths under ``base`` (default: the current folder)
    made relative, quoted so that it can be pasted into a shell."""
    return shlex.join(recorded_argument(argument, base) for argument in arguments)
