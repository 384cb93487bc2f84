"""Writing files so that a reader never sees half of one: :func:`atomic_write`.

Every file the package writes (checkpoints, images, splits, reports, overlays) goes through here: the content is
written to a hidden temporary file in the target's own folder, flushed to disk, given the permissions a plain
``open(path, "w")`` would give under the current umask, and renamed over the target in one step. If anything
fails, or the process is interrupted, the temporary file is removed and an existing target is left untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
        writer: called with the temporary file's path (same folder, same suffix as ``path`` so that writers that
            pick a format by suffix, such as SimpleITK's, pick the right one); it writes the whole content.
        mode: permissions before the umask is applied (``0o666``: what ``open(path, "w")`` gives).

    Returns:
        ``path``.

    Raises:
        Whatever ``writer`` or the file system raises; the temporary file is gone by then.
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
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
