"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations

from pathlib import Path


class SpineSegDiffError(Exception):
    """Base class of every error the command line reports as a single line."""


class InputError(SpineSegDiffError, ValueError):
    """A user-supplied file or folder cannot be used; the message names the path and the problem.

    Example: ``InputError("scan.mha", "image is 2D, a 3D volume is expected")`` reads
    ``scan.mha: image is 2D, a 3D volume is expected``.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")

    def __reduce__(self):  # picklable with its own arguments: it crosses process boundaries (Ray workers)
        return type(self), (self.path, self.problem)


class MissingInputError(SpineSegDiffError, FileNotFoundError):
    """A path the user named does not exist (a ``FileNotFoundError`` that names the path)."""

    def __init__(self, path: str | Path, what: str = "file or folder") -> None:
        self.path = Path(path)
        self.what = what
        self.problem = f"no such {what}"
        super().__init__(f"{path}: {self.problem}")

    def __reduce__(self):
        return type(self), (self.path, self.what)
