"""Writing files so that a reader never sees half of one: :func:`atomic_write`.

Every file the package writes (checkpoints, images, splits, reports, overlays) goes through here: the content is
written to a hidden temporary file in the target's own folder, flushed to disk, given the permissions a plain
``open(path, "w")`` would give under the current umask, and renamed over the target in one step. If anything
fails, or the process is interrupted, the temporary file is removed and an existing target is left untouched.

Files that belong together (a scan's four outputs) go through :class:`StagedFiles`: each is written into a hidden
staging folder inside the target folder (``.spinesegdiff-staging-<pid>-<random>``), and :meth:`StagedFiles.publish`
renames them into place together, in the order they were added. Before the first rename a journal naming the
files is written and flushed; a process killed during the renames (``kill -9``) leaves the journal behind, and
:func:`recover_staging` (run by a later process) finishes the renames. A staging folder without a journal (killed
while writing) is removed. Only folders whose name matches the staging pattern, whose process is no longer
alive on this host, are ever touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STAGING_PREFIX = ".spinesegdiff-staging-"
STAGING_NAME = re.compile(r"\.spinesegdiff-staging-(\d+)-[a-z0-9_]{8}")
"""A staging folder's name: the prefix, the writing process's id and :func:`tempfile.mkdtemp`'s 8 characters."""
_OWNER = "owner.json"
_JOURNAL = "publish.json"
_FILES = "files"
"""Inside a staging folder: who made it, the journal of a publish, and the staged files (in their own folder,
so that no output name can clash with the other two)."""


def _umask() -> int:
    """The process's umask (read without changing it, where ``/proc`` tells; else the common 0o022)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def atomic_write(path: str | Path, writer: Callable[[Path], object], *, mode: int = 0o666) -> Path:
    """Write ``path`` all at once: ``writer(temporary_path)`` fills a temporary file that then replaces ``path``.

    Args:
        path: the file to write; its folder must exist.
        writer: called with the temporary file's path (same folder, the suffix of ``path`` in lower case, so that
            writers that pick a format by suffix, such as SimpleITK's, pick the right one); it writes it whole.
        mode: permissions before the umask is applied (``0o666``: what ``open(path, "w")`` gives).

    Returns:
        ``path``.

    Raises:
        Whatever ``writer`` or the file system raises; the temporary file is gone by then.
    """
    path = Path(path)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()  # writers match lower case
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        writer(temporary)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(temporary, mode & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (renames into it) to disk, where the platform allows opening a folder."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


class StagedFiles:
    """Files written into a private staging folder, then renamed into their folder together.

    Use :meth:`create`, :meth:`add` each file, then :meth:`publish`; :meth:`discard` removes the staging folder
    (and is a no-op after a publish). Targets must lie directly in ``folder``.
    """

    def __init__(self, folder: Path, staging: Path) -> None:
        self.folder = folder
        self.staging = staging
        self.files = staging / _FILES
        self.targets: list[Path] = []

    @classmethod
    def create(cls, folder: str | Path) -> StagedFiles:
        """A new staging folder in ``folder`` (which must exist), named with this process's id."""
        folder = Path(folder)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder))
        stage = cls(folder, staging)
        try:
            stage.files.mkdir()
            atomic_write_text(staging / _OWNER, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        except BaseException:
            stage.discard()
            raise
        return stage

    def add(self, target: str | Path, writer: Callable[[Path], object]) -> Path:
        """Write ``target``'s content into the staging folder with :func:`atomic_write`; returns the staged file."""
        target = Path(target)
        if target.parent.resolve() != self.folder.resolve():
            raise ValueError(f"{target}: a staged file must lie directly in {self.folder}")
        staged = atomic_write(self.files / target.name, writer)
        self.targets.append(target)
        return staged

    def publish(self) -> list[Path]:
        """Rename the staged files into place in the order they were added; on failure remove those renamed.

        When the set replaces an earlier one, the earlier set's last file is removed first, so that while the
        files are renamed (or after a failed rename) no set that looks whole mixes old and new files.

        The journal is flushed before the first rename, so that a killed process's set is completed by
        :func:`recover_staging`; it is removed before a rollback, so that a rollback is never completed.
        """
        journal = self.staging / _JOURNAL
        _fsync_folder(self.files)
        atomic_write_text(journal, json.dumps({"files": [t.name for t in self.targets]}))
        _fsync_folder(self.staging)
        done: list[Path] = []
        try:
            if self.targets:  # an earlier set's last file (its report) goes first: a mixed set is never whole
                self.targets[-1].unlink(missing_ok=True)
            for target in self.targets:
                os.replace(self.files / target.name, target)
                done.append(target)
        except BaseException:
            journal.unlink(missing_ok=True)
            _fsync_folder(self.staging)
            for target in done:
                target.unlink(missing_ok=True)
            raise
        _fsync_folder(self.folder)
        self.discard()
        return done

    def discard(self) -> None:
        """Remove the staging folder and what it holds (nothing outside it)."""
        shutil.rmtree(self.staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Recovery:
    """What :func:`recover_staging` did: staging folders removed, and files a killed publish left to rename."""

    removed: list[Path] = field(default_factory=list)
    completed: list[Path] = field(default_factory=list)


def _stale_staging(folder: Path) -> list[Path]:
    """The staging folders in ``folder`` of processes that are gone (this host's, or of unknown host)."""
    stale = []
    for entry in sorted(folder.iterdir()):
        match = STAGING_NAME.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir() or _process_alive(int(match.group(1))):
            continue
        owner = _read_json(entry / _OWNER)
        if owner is not None and owner.get("host") != socket.gethostname():
            continue  # a process on another machine sharing the folder: its pid means nothing here
        stale.append(entry)
    return stale


def recover_staging(folder: str | Path) -> Recovery:
    """Clean up after processes killed while writing into ``folder``.

    A staging folder whose journal was written (killed during the renames) is completed: its remaining files are
    renamed into place, so the set is whole. One without a journal (killed while writing) is removed, leaving
    the folder as it was. Only entries whose name matches :data:`STAGING_NAME`, that are real folders, whose
    process id is not alive and whose recorded host is this one are touched; nothing else is ever removed.
    """
    folder = Path(folder)
    recovery = Recovery()
    if not folder.is_dir():
        return recovery
    for staging in _stale_staging(folder):
        journal = _read_json(staging / _JOURNAL)
        names = journal.get("files", []) if journal else []
        for name in names:
            staged = staging / _FILES / str(name)
            if isinstance(name, str) and "/" not in name and staged.is_file() and not staged.is_symlink():
                os.replace(staged, folder / name)
                recovery.completed.append(folder / name)
        _fsync_folder(folder)
        shutil.rmtree(staging, ignore_errors=True)
        recovery.removed.append(staging)
    return recovery
