"""Reading back the triage CSV a review page exports (``spinesegdiff.review.read_decisions``).

The page (``spinesegdiff review OUT``) keeps each case's decision and note in the browser and exports them as
CSV, one row per decided case::

    path,case,decision,note,reviewed_at
    /data/scans/118_t2_SPACE.mha,118_t2_SPACE,needs_correction,"canal cut at L5, redo",2024-05-01T10:22:03.120Z

``path`` is the scan as the case's report names it (made absolute where the review found it), so the file can
be fed back to ``spinesegdiff predict --input-list triage.csv --where decision=needs_correction``; ``case`` is the
output stem; ``decision`` one of :data:`DECISIONS`; ``note`` free text (may be empty); ``reviewed_at`` optional.
Other columns are ignored, so a spreadsheet may add its own.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from spinesegdiff.errors import InputError, MissingInputError

DECISIONS: tuple[str, ...] = ("accepted", "needs_correction", "rejected")
"""The triage decisions, in the order the page offers them."""
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "case", "decision", "note")
EXPORT_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, "reviewed_at")
"""The columns the page writes, in order."""
MAX_DECISIONS_BYTES = 32 << 20


@dataclass(frozen=True)
class Decision:
    """One reviewed case: the scan's ``path``, the ``case`` (output stem), the ``decision``, the reviewer's ``note``.

    ``line`` is the CSV line the row starts on (1-based, the header is line 1); ``reviewed_at`` the ISO time the
    page recorded, or ``""``.
    """

    path: str
    case: str
    decision: str
    note: str
    line: int
    reviewed_at: str = ""


def _read_text(path: Path) -> str:
    if not path.exists():
        raise MissingInputError(path, "triage file")
    if not path.is_file():
        raise InputError(path, "is a folder, not a triage CSV")
    try:
        if path.stat().st_size > MAX_DECISIONS_BYTES:
            raise InputError(path, f"is larger than {MAX_DECISIONS_BYTES >> 20} MiB: not a triage CSV")
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(path, f"is not UTF-8 text (byte {err.start}): not a triage CSV") from err
    except OSError as err:
        raise InputError(path, f"cannot read the triage CSV ({err.strerror or err})") from err


def _header(path: Path, reader: csv.reader) -> dict[str, int]:
    header = next(reader, None)
    if not header:
        raise InputError(path, f"is empty: a triage CSV starts with the header {','.join(EXPORT_COLUMNS)}")
    columns = [name.strip().lower() for name in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise InputError(path, f"header lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                               f"(a triage CSV has {','.join(EXPORT_COLUMNS)})")
    doubled = sorted({name for name in columns if columns.count(name) > 1 and name in EXPORT_COLUMNS})
    if doubled:
        raise InputError(path, f"header names the column {doubled[0]} twice")
    return {name: columns.index(name) for name in EXPORT_COLUMNS if name in columns}


def _decision(path: Path, row: list[str], where: dict[str, int], line: int) -> Decision:
    def cell(name: str) -> str:
        index = where.get(name)
        return row[index].strip() if index is not None and index < len(row) else ""

    needed = max(where[name] for name in REQUIRED_COLUMNS) + 1
    if len(row) < needed:
        raise InputError(path, f"line {line}: {len(row)} field{'s' if len(row) != 1 else ''}, the header needs "
                               f"{needed}")
    decision = cell("decision")
    if decision not in DECISIONS:
        raise InputError(path, f"line {line}: decision {decision!r} is not one of {', '.join(DECISIONS)}")
    case = cell("case")
    if not case:
        raise InputError(path, f"line {line}: the case is empty")
    if not cell("path"):
        raise InputError(path, f"line {line}: the path of case {case!r} is empty")
    note_index = where["note"]
    return Decision(path=cell("path"), case=case, decision=decision, note=row[note_index].strip(), line=line,
                    reviewed_at=cell("reviewed_at"))


def read_decisions(path: str | Path) -> list[Decision]:
    """The decisions in a triage CSV exported by a review page, in file order.

    Raises:
        MissingInputError: no such file.
        InputError: not UTF-8 text, a header without ``path``, ``case``, ``decision`` and ``note``, a row with
            too few fields, an unknown decision, an empty case or path, or a case decided twice (the message
            names the file and the line).
    """
    path = Path(path)
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        where = _header(path, reader)
        decisions: list[Decision] = []
        seen: dict[str, int] = {}
        line = reader.line_num + 1
        for row in reader:
            if any(field.strip() for field in row):
                decision = _decision(path, row, where, line)
                if decision.case in seen:
                    raise InputError(path, f"line {line}: case {decision.case!r} is decided twice (line "
                                           f"{seen[decision.case]} too)")
                seen[decision.case] = line
                decisions.append(decision)
            line = reader.line_num + 1
    except csv.Error as err:
        raise InputError(path, f"line {reader.line_num}: not valid CSV ({err})") from err
    return decisions
