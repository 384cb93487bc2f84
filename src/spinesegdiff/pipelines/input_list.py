"""``--input-list FILE``: the scans of a cohort that does not live in one folder, named in a file.

Two forms are read:

- plain text: one path per line; blank lines and lines starting with ``#`` are ignored;
- CSV: a header with a ``path`` column (or ``input``, as in ``summary.csv``; or ``scan``), other columns ignored
  except by ``--where COLUMN=VALUE`` filters, so a cohort summary (``--where status=failed``) or a review page's
  triage export (``--where decision=needs_correction``) can be fed straight back to ``predict``.

A file is taken for CSV when its first line holds a comma and one of the path column names. A relative path is
looked up beside the list file first, then in the working directory. Nothing here opens a scan: the entries are
checked as scans by :func:`~spinesegdiff.pipelines.inputs.scan_list_inputs`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from spinesegdiff.errors import InputError, MissingInputError

PATH_COLUMNS: tuple[str, ...] = ("path", "input", "scan")
"""The column names a CSV list may give its scan paths under (first match, case-insensitive)."""
MAX_LIST_BYTES = 64 << 20
"""A list of paths is small; a larger file is refused before it is read (64 MiB holds about a million paths)."""


@dataclass(frozen=True)
class ListedPath:
    """One entry of an input list: the path as written, where it was found, and the line it is on (1-based)."""

    written: str
    path: Path
    line: int


def parse_where(conditions: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """``["status=failed", "decision=needs_correction"]`` -> ``{"status": "failed", ...}`` (column names lower-case).

    Raises:
        InputError: a condition without ``=`` or with an empty column name.
    """
    where: dict[str, str] = {}
    for condition in conditions or ():
        column, sep, value = condition.partition("=")
        if not sep or not column.strip():
            raise InputError(None, f"--where {condition!r}: expected COLUMN=VALUE, such as status=failed")
        where[column.strip().lower()] = value.strip()
    return where


def _resolve(written: str, list_file: Path) -> Path:
    """A relative path beside the list file if it is there, else as given (relative to the working directory)."""
    path = Path(written).expanduser()
    if path.is_absolute():
        return path
    beside = list_file.parent / path
    return beside if beside.exists() or beside.is_symlink() else path


def _read_text(list_file: Path) -> str:
    if list_file.is_symlink() and not list_file.exists():
        raise InputError(list_file, "input list is a broken symbolic link")
    if not list_file.exists():
        raise MissingInputError(list_file)
    if not list_file.is_file():
        raise InputError(list_file, "input list is a folder, not a file: pass a folder with -i")
    try:
        if list_file.stat().st_size > MAX_LIST_BYTES:
            raise InputError(list_file, f"input list is larger than {MAX_LIST_BYTES >> 20} MiB: not a list of paths")
        raw = list_file.read_bytes()
    except OSError as err:
        raise InputError(list_file, f"cannot read the input list ({err.strerror or err})") from err
    if b"\x00" in raw[:4096]:
        raise InputError(list_file, "input list is a binary file, not text with one path per line or a CSV")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(list_file, f"input list is not UTF-8 text (byte {err.start})") from err


def _path_column(header: list[str]) -> str | None:
    names = [name.strip().lower() for name in header]
    return next((name for name in PATH_COLUMNS if name in names), None)


def _csv_entries(text: str, list_file: Path, where: dict[str, str]) -> list[tuple[str, int]]:
    reader = csv.reader(io.StringIO(text))
    header = [name.strip().lower() for name in next(reader)]
    column = _path_column(header)
    missing = [name for name in where if name not in header]
    if missing:
        raise InputError(list_file, f"--where names column {missing[0]!r}, which the CSV does not have "
                                    f"(columns: {', '.join(header)})")
    entries = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num
        if len(row) != len(header):
            raise InputError(list_file, f"line {line}: {len(row)} fields where the header has {len(header)}")
        cells = dict(zip(header, (cell.strip() for cell in row), strict=True))
        if all(cells[name] == value for name, value in where.items()) and cells[column]:
            entries.append((cells[column], line))
    return entries


def read_input_list(list_file: str | Path, *, where: dict[str, str] | None = None) -> tuple[ListedPath, ...]:
    """The paths an input list names, in its order (a path named twice is kept once, at its first line).

    Args:
        list_file: a text file (one path per line) or a CSV with a ``path``/``input``/``scan`` column.
        where: keep only CSV rows whose columns hold these values (``{"status": "failed"}``); refused for a
            plain list.

    Raises:
        MissingInputError: the list file does not exist.
        InputError: not a readable UTF-8 text file, a CSV row with the wrong number of fields, a ``--where``
            column the CSV does not have or a plain list with ``--where``, or no path left.
    """
    list_file = Path(list_file)
    where = where or {}
    text = _read_text(list_file)
    first = text.splitlines()[0] if text.strip() else ""
    is_csv = "," in first and _path_column(next(csv.reader([first]))) is not None
    if is_csv:
        entries = _csv_entries(text, list_file, where)
    else:
        if where:
            raise InputError(list_file, "--where needs a CSV list with a header (a path column and the columns "
                                        "named in --where)")
        entries = [(line.strip(), number) for number, line in enumerate(text.splitlines(), start=1)
                   if line.strip() and not line.lstrip().startswith("#")]
    listed: dict[str, ListedPath] = {}
    for written, line in entries:
        path = _resolve(written, list_file)
        key = str(path.absolute())
        listed.setdefault(key, ListedPath(written=written, path=path, line=line))
    if not listed:
        condition = f" with {', '.join(f'{k}={v}' for k, v in where.items())}" if where else ""
        raise InputError(list_file, f"input list names no scans{condition}")
    return tuple(listed.values())
