"""The cohort summary of ``spinesegdiff predict``: one CSV row per scan of the run, rewritten after every scan.

The file is ``summary.csv`` in the output folder, or ``summary-<K>-of-<N>.csv`` for ``--shard K/N``, so shards
writing into one folder never write the same file. Every shard's file has the same header (:data:`COLUMNS`);
join them with the header once::

    { head -n 1 summary-1-of-4.csv; tail -q -n +2 summary-*-of-4.csv; } > summary.csv

Each rewrite is atomic (:func:`~spinesegdiff.files.atomic_write_text`): an interrupted run leaves the rows of the
scans it finished. A row's numbers come from the scan's ``<stem>.json`` report, so a scan skipped as complete
(``--skip-existing``) reports its earlier results. A file of that name that is not such a summary is never
replaced (:func:`check_summary`, before any work).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS
from spinesegdiff.errors import InputError
from spinesegdiff.files import atomic_write_text

STATUSES = ("written", "skipped", "failed")
COLUMNS = ("input", "status",
           *(f"{a}_area_mm2" for a in STRUCTURE_ABBREVIATIONS),
           *(f"{a}_volume_mm3" for a in STRUCTURE_ABBREVIATIONS),
           *(f"{a}_uncertainty_mean" for a in STRUCTURE_ABBREVIATIONS),
           "uncertainty_mean", "quality", "seconds", "problem")
"""Areas for central-slice runs, volumes for ``--volume`` runs (the other columns empty)."""


def summary_path(output: str | Path, shard: Any = None) -> Path:
    """``summary.csv``, or ``summary-<K>-of-<N>.csv`` for a shard (anything with ``index`` and ``count``)."""
    name = "summary.csv" if shard is None else f"summary-{shard.index}-of-{shard.count}.csv"
    return Path(output) / name


def check_summary(path: Path) -> None:
    """Refuse to replace a file that is not a spinesegdiff summary (its first line is not :data:`COLUMNS`).

    Raises:
        InputError: naming the file.
    """
    if not path.exists() and not path.is_symlink():
        return
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        header = None
    if path.is_symlink() or not path.is_file() or header != list(COLUMNS):
        raise InputError(path, "is not a spinesegdiff summary and would be replaced: move it or choose another "
                               "output folder")


def _report(path: Path | None) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def summary_row(scan: Path, status: str, *, report: Path | None = None, seconds: float = 0.0,
                problem: str | None = None) -> dict[str, Any]:
    """One row: ``status`` one of :data:`STATUSES`; the numbers read from the scan's ``report`` (if any)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    data = _report(report)
    structures = data.get("structures") if isinstance(data.get("structures"), dict) else {}
    row: dict[str, Any] = dict.fromkeys(COLUMNS, "")
    row.update(input=str(scan), status=status, seconds=f"{seconds:.2f}", problem=problem or "")
    for abbreviation in STRUCTURE_ABBREVIATIONS:
        entry = structures.get(abbreviation) if isinstance(structures.get(abbreviation), dict) else {}
        for key in ("area_mm2", "volume_mm3", "uncertainty_mean"):
            value = entry.get(key)
            row[f"{abbreviation}_{key}"] = "" if value is None else value
    overall = structures.get("overall_uncertainty_mean")
    row["uncertainty_mean"] = "" if overall is None else overall
    quality = data.get("quality")
    row["quality"] = quality.get("verdict", "") if isinstance(quality, dict) else ""
    return row


def write_summary(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (from :func:`summary_row`) as CSV with the header :data:`COLUMNS`, atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, text.getvalue())
