"""A scan's outputs appear all together or not at all: staged writing, signals, strict JSON.

- :func:`staged_outputs` stages a scan's files in a hidden folder inside the output folder and publishes them
  together (the JSON report last, so a set without its JSON is recognisably incomplete); any failure, a signal
  included, leaves the output folder as it was. Write and permission errors become one-line
  :class:`~spinesegdiff.errors.InputError` s naming the output file. Staging folders of killed runs are
  cleaned up first (:func:`~spinesegdiff.files.recover_staging`).
- :func:`interruptible` turns SIGTERM and SIGINT into :class:`Interrupted` for as long as it is entered (the
  previous handlers are restored after), and :func:`held_signals` defers them over a publish, so a signal
  finishes or rolls back the scan in progress, never splits its set.
- :func:`strict_json` writes JSON without bare ``NaN``/``Infinity``: an undefined number is ``null``.

A set is complete when its JSON report exists. Files without their report (from an older version killed while
writing, or from a ``kill -9`` during the renames before a later run completed them) are never deleted: they
may not be ours, and running the scan again replaces them.
"""

from __future__ import annotations

import json
import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spinesegdiff.errors import InputError
from spinesegdiff.files import StagedFiles, recover_staging

SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals a batch finishes or rolls back its scan for; exit codes 128 + the signal (143, 130)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT arrived; ``exit_code`` is 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


@dataclass
class _Guard:
    """The state of one :func:`interruptible` block (or of one :func:`held_signals` block outside any)."""

    held: int = 0
    pending: int | None = None


_GUARDS: list[_Guard] = []
"""The active :func:`interruptible` blocks, innermost last (empty outside any: no state is left changed)."""


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _handle(signum: int, frame: object) -> None:
    guard = _GUARDS[-1]
    if guard.held:
        guard.pending = guard.pending or signum
        return
    raise Interrupted(signum)


@contextmanager
def _handlers(handler: Callable[[int, object], None]) -> Iterator[None]:
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    try:
        for signum in SIGNALS:
            signal.signal(signum, handler)
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)


@contextmanager
def interruptible() -> Iterator[None]:
    """While entered, SIGTERM and SIGINT raise :class:`Interrupted` (deferred inside :func:`held_signals`).

    Outside the main thread (where Python cannot set handlers) it does nothing.
    """
    if not _in_main_thread():
        yield
        return
    guard = _Guard()
    _GUARDS.append(guard)
    try:
        with _handlers(_handle):
            yield
    finally:
        _GUARDS.remove(guard)


@contextmanager
def held_signals() -> Iterator[None]:
    """Defer SIGTERM and SIGINT over a block that must not be cut short (renames, a rollback).

    Inside :func:`interruptible` a deferred signal raises :class:`Interrupted` when the block ends; outside,
    handlers that only record are installed for the block, and a signal that came is then raised again under
    the previous handlers (by default: SIGINT raises ``KeyboardInterrupt``, SIGTERM ends the process).
    """
    if not _in_main_thread():
        yield
        return
    if _GUARDS:
        guard = _GUARDS[-1]
        guard.held += 1
        try:
            yield
        finally:
            guard.held -= 1
            if not guard.held and guard.pending is not None:
                signum, guard.pending = guard.pending, None
                raise Interrupted(signum)
        return
    local = _Guard()

    def record(signum: int, frame: object) -> None:
        local.pending = local.pending or signum

    with _handlers(record):
        yield
    if local.pending is not None:
        signal.raise_signal(local.pending)


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-Infinity) in it, at any depth, replaced by ``None``."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(value: Any) -> str:
    """JSON text (2-space indent) that any strict parser reads: non-finite numbers become ``null``."""
    return json.dumps(finite_or_none(value), indent=2, allow_nan=False)


def _write_problem(err: BaseException) -> str:
    if isinstance(err, OSError):
        return f"cannot write output ({err.strerror or err})"
    return "cannot write output (the image writer failed: is the disk full or the folder not writable?)"


class OutputSet:
    """The files of one scan being staged (see :func:`staged_outputs`)."""

    def __init__(self, stage: StagedFiles) -> None:
        self._stage = stage

    def write(self, target: Path, writer: Callable[[Path], object]) -> None:
        """Stage ``target``: ``writer(path)`` writes the whole content to ``path``."""
        try:
            self._stage.add(target, writer)
        except (OSError, RuntimeError) as err:  # RuntimeError: SimpleITK's writer (disk full, no permission)
            raise InputError(target, _write_problem(err)) from err

    def write_text(self, target: Path, text: str) -> None:
        self.write(target, lambda path: path.write_text(text, encoding="utf-8"))


@contextmanager
def staged_outputs(folder: str | Path) -> Iterator[OutputSet]:
    """Stage a scan's outputs; they are published together when the block ends without an error.

    Write the JSON report last: files are renamed in the order they were written. The output folder is
    created; staging folders of killed runs in it are cleaned up first. On any error or signal the staged
    files are removed and nothing of this scan appears.

    Raises:
        InputError: the folder cannot be created or written, or a file cannot be written (it is named).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with held_signals():
            recover_staging(folder)
        stage = StagedFiles.create(folder)
    except OSError as err:
        raise InputError(folder, f"cannot write into the output folder ({err.strerror or err})") from err
    try:
        yield OutputSet(stage)
        with held_signals():
            try:
                stage.publish()
            except OSError as err:
                raise InputError(err.filename2 or folder, _write_problem(err)) from err
    finally:
        with held_signals():
            stage.discard()
