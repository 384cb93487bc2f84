"""The cases of a results folder: each scan's report (``<stem>.json``) read into a :class:`CaseRecord`.

A results folder is what ``spinesegdiff predict -o OUT`` writes: per scan ``<stem>_seg.<ext>``,
``<stem>_uncertainty.<ext>``, ``<stem>_overlay.png`` and the report ``<stem>.json`` that lists them, and for cohort
runs ``summary.csv`` (``summary-K-of-N.csv`` per shard). :func:`read_cases` reads the reports (never the images),
finds each scan's image (the path the report records, as given, then relative to ``OUT``), and adds the scans a
cohort summary lists as failed, which have no report. :func:`most_doubtful_first` orders the cases for triage.

Only JSON; nothing here opens an image (see :mod:`spinesegdiff.review.layers`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spinesegdiff.data.io import image_stem
from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS, STRUCTURE_NAMES
from spinesegdiff.errors import InputError, MissingInputError
from spinesegdiff.pipelines.summary import COLUMNS as SUMMARY_COLUMNS

MAX_REPORT_BYTES = 8 << 20
"""A report is a few kB; a larger JSON file is not one (and is not read)."""
MAX_LEVELS = 40
"""At most this many entries of a report's ``discs`` / ``vertebrae`` lists are shown."""
SUMMARY_NAME = re.compile(r"summary(-\d+-of-\d+)?\.csv")
BY_SCORE = "quality score"
BY_UNCERTAINTY = "mean uncertainty"


@dataclass(frozen=True)
class CaseRecord:
    """One scan of a results folder, as its report describes it.

    Attributes:
        case: the output stem (unique in the folder); a failed scan without a report gets its scan's stem.
        report: the ``<stem>.json`` report, ``None`` for a failed scan.
        input: the scan path as the report (or summary) records it, ``None`` for an in-memory array.
        image: that scan found on disk (absolute), ``None`` when not found.
        segmentation, uncertainty: the label and uncertainty files (``None`` when the report lists none or the
            file is missing).
        mode: ``"central slice"`` or ``"volume"``.
        slices: the segmented sagittal slices (indices along the scan's left-right axis).
        structures: per abbreviation (``SC``, ``VB``, ``IVD``): ``name``, ``area_mm2`` or ``volume_mm3``,
            ``uncertainty_mean``, ``uncertainty_max`` (numbers or ``None``).
        uncertainty_mean: mean uncertainty over the segmented slices, in [0, 1], or ``None``.
        quality_score: the report's ``quality.score`` in [0, 1] (higher is better), or ``None``.
        verdict: ``ok``, ``doubtful``, ``failed`` or ``unknown``.
        reasons: why the quality check found the result doubtful.
        measures: the quality check's measures (numbers by name).
        flags: what the reviewer should know (``image not found``, ``segmentation missing``, ...).
        discs, vertebrae: per-level measurements when the report has them (scalar fields, and ``uncertainty``:
            ``boundary_entropy`` and a ``[low, high]`` range per measure).
        levels: how the levels were named (``named_from``, ``doubtful``, ``reason``, ...), when the report says.
        citation: the report's data citation, if any.
        series: the ``SeriesInstanceUID`` of the series segmented, for a DICOM folder holding several (the
            report's ``series.uid``), so that the page draws that series under its labels.
        series_label: that series in words for the reviewer (``3 't2_tse_sag' (sagittal, T2; chosen by rule)``),
            ``None`` for a scan that is no DICOM folder.
    """

    case: str
    report: Path | None
    input: str | None
    image: Path | None
    segmentation: Path | None
    uncertainty: Path | None
    mode: str
    slices: tuple[int, ...]
    structures: dict[str, dict[str, Any]]
    uncertainty_mean: float | None
    quality_score: float | None
    verdict: str
    reasons: tuple[str, ...]
    measures: dict[str, Any]
    flags: tuple[str, ...]
    discs: tuple[dict[str, Any], ...] = ()
    vertebrae: tuple[dict[str, Any], ...] = ()
    levels: dict[str, Any] = field(default_factory=dict)
    citation: str | None = None
    series: str | None = None
    series_label: str | None = None

    @property
    def failed(self) -> bool:
        return self.verdict == "failed"

    @property
    def export_path(self) -> str:
        """The scan's path for the triage CSV: where it was found (absolute), else as recorded."""
        if self.image is not None:
            return str(self.image)
        return self.input or ""


@dataclass(frozen=True)
class CaseCollection:
    """The cases of a folder (in file-name order) and one note per JSON file left out."""

    folder: Path
    cases: tuple[CaseRecord, ...]
    notes: tuple[str, ...]


def _number(value: Any) -> float | None:
    """A finite number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value if not isinstance(value, str) else value[:200]
    return _number(value)


def _scalars(mapping: Any) -> dict[str, Any]:
    """The entries of a JSON object whose values are strings, numbers, booleans or null (others dropped)."""
    if not isinstance(mapping, dict):
        return {}
    return {str(k)[:80]: _scalar(v) for k, v in mapping.items() if v is None or isinstance(v, bool | str | int | float)}


def _range(value: Any) -> list[float] | None:
    """A ``[low, high]`` pair of finite numbers, else ``None``."""
    if not isinstance(value, list) or len(value) != 2:
        return None
    pair = [_number(v) for v in value]
    return None if None in pair else pair


def _level_entry(item: dict[str, Any]) -> dict[str, Any]:
    """A disc or vertebra of the report: its scalar fields, and of its ``uncertainty`` the edge entropy and the
    ``[low, high]`` range of each measure."""
    entry = _scalars(item)
    spread = item.get("uncertainty")
    if isinstance(spread, dict):
        entry["uncertainty"] = {"boundary_entropy": _number(spread.get("boundary_entropy")),
                                **{str(k)[:40]: _range(v) for k, v in spread.items() if k != "boundary_entropy"}}
    return entry


def _levels(value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list):
        return ()
    return tuple(_level_entry(item) for item in value[:MAX_LEVELS] if isinstance(item, dict))


def _find_image(recorded: str | None, folder: Path) -> Path | None:
    """The scan a report records: as given (absolute, or relative to the working directory), then in ``folder``."""
    if not recorded:
        return None
    given = Path(recorded).expanduser()
    for candidate in (given,) if given.is_absolute() else (given, folder / given):
        try:
            if candidate.exists():
                return Path(os.path.abspath(candidate))  # absolute, links kept: the path the user knows
        except OSError:  # a name too long, a folder without permission: not found
            continue
    return None


def _output(folder: Path, outputs: dict[str, Any], key: str, stem: str) -> tuple[Path | None, str | None]:
    """The output file ``key`` of a report, if it is a plain file name of this stem in ``folder`` and exists."""
    name = outputs.get(key)
    what = {"segmentation": "segmentation", "uncertainty": "uncertainty map"}[key]
    if not isinstance(name, str) or not name:
        return None, f"no {what} listed"
    if Path(name).name != name or name in (".", "..") or not name.startswith(f"{stem}_"):
        return None, f"{what} {name!r} is not a file of this case"
    path = folder / name
    return (path, None) if path.is_file() else (None, f"{what} {name} missing")


def _structures(data: Any) -> tuple[dict[str, dict[str, Any]], float | None]:
    structures = data if isinstance(data, dict) else {}
    table: dict[str, dict[str, Any]] = {}
    for abbreviation, name in zip(STRUCTURE_ABBREVIATIONS, STRUCTURE_NAMES, strict=True):
        entry = structures.get(abbreviation) if isinstance(structures.get(abbreviation), dict) else {}
        table[abbreviation] = {"name": name, **{key: _number(entry.get(key)) for key in
                                                ("area_mm2", "volume_mm3", "uncertainty_mean", "uncertainty_max")}}
    return table, _number(structures.get("overall_uncertainty_mean"))


def _slices(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(int(v) for v in value if isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def _is_report(data: Any) -> bool:
    outputs = data.get("outputs") if isinstance(data, dict) else None
    return isinstance(outputs, dict) and "segmentation" in outputs and isinstance(data.get("structures"), dict)


def read_report(report: Path, folder: Path) -> CaseRecord:
    """A :class:`CaseRecord` from one ``<stem>.json`` report of ``folder``.

    Raises:
        InputError: the file is unreadable, not JSON, or not a spinesegdiff report (the message says which).
    """
    try:
        if report.stat().st_size > MAX_REPORT_BYTES:
            raise InputError(report, f"skipped: larger than {MAX_REPORT_BYTES >> 20} MiB, not a spinesegdiff report")
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(report, f"skipped: not a readable JSON report ({type(err).__name__})") from err
    if not _is_report(data):
        raise InputError(report, "skipped: not a spinesegdiff report (no outputs and structures)")
    stem = report.name[: -len(".json")]
    recorded = data.get("input") if isinstance(data.get("input"), str) else None
    image = _find_image(recorded, folder)
    flags = [] if image is not None else ["image not found" if recorded else "no image recorded"]
    segmentation, problem = _output(folder, data["outputs"], "segmentation", stem)
    flags += [problem] if problem else []
    uncertainty, problem = _output(folder, data["outputs"], "uncertainty", stem)
    flags += [problem] if problem else []
    structures, overall = _structures(data["structures"])
    quality = data.get("quality") if isinstance(data.get("quality"), dict) else {}
    score = _number(quality.get("score"))
    verdict = quality.get("verdict") if quality.get("verdict") in ("ok", "doubtful") else "unknown"
    reasons = tuple(str(r)[:300] for r in quality.get("reasons", []) if isinstance(r, str)) \
        if isinstance(quality.get("reasons"), list) else ()
    mode = data.get("mode") if data.get("mode") in ("central slice", "volume") else "central slice"
    return CaseRecord(
        case=stem, report=report, input=recorded, image=image, segmentation=segmentation, uncertainty=uncertainty,
        mode=mode, slices=_slices(data.get("sagittal_slices")), structures=structures, uncertainty_mean=overall,
        quality_score=score if score is not None and 0.0 <= score <= 1.0 else None, verdict=verdict,
        reasons=reasons, measures=_scalars(quality.get("measures")), flags=tuple(flags),
        discs=_levels(data.get("discs")), vertebrae=_levels(data.get("vertebrae")),
        levels=_scalars(data.get("levels")),
        citation=data["citation"][:300] if isinstance(data.get("citation"), str) else None,
        series=_series_uid(data.get("series")), series_label=_series_label(data.get("series")))


def _series_label(entry: Any) -> str | None:
    """The report's ``series`` in words: number, description, plane, weighting and how it was chosen."""
    if not isinstance(entry, dict):
        return None
    number, description = entry.get("number"), entry.get("description")
    whole = isinstance(number, int) and not isinstance(number, bool)
    named = " ".join(part for part in (str(number) if whole else None,
                                       repr(description[:80]) if isinstance(description, str) and description else None)
                     if part)
    kind = ", ".join(str(entry[key])[:40] for key in ("plane", "weighting") if isinstance(entry.get(key), str))
    chosen = entry.get("chosen_by") if entry.get("chosen_by") in ("only", "rule", "user") else None
    details = "; ".join(part for part in (kind, chosen and f"chosen by {chosen}") if part)
    label = " ".join(part for part in (named, details and f"({details})") if part)
    return label or None


def _series_uid(entry: Any) -> str | None:
    """The report's ``series.uid`` when it is a DICOM UID (digits and dots), else ``None``."""
    uid = entry.get("uid") if isinstance(entry, dict) else None
    return uid if isinstance(uid, str) and 0 < len(uid) <= 64 and re.fullmatch(r"[0-9.]+", uid) else None


def _failed_rows(folder: Path) -> list[dict[str, str]]:
    """The rows of the folder's cohort summaries whose scan failed (no report was written for them)."""
    rows: list[dict[str, str]] = []
    for table in sorted(p for p in folder.iterdir() if SUMMARY_NAME.fullmatch(p.name) and p.is_file()):
        try:
            with table.open(encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames != list(SUMMARY_COLUMNS):
                    continue
                rows += [row for row in reader if row.get("status") == "failed" and row.get("input")]
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
    return rows


def _failed_case(row: dict[str, str], folder: Path, taken: set[str]) -> CaseRecord:
    stem = image_stem(row["input"]) or "scan"
    case, count = stem, 1
    while case in taken:
        count += 1
        case = f"{stem}~{count}"
    structures, _ = _structures({})
    problem = (row.get("problem") or "no report written").strip()
    image = _find_image(row["input"], folder)
    return CaseRecord(case=case, report=None, input=row["input"], image=image, segmentation=None, uncertainty=None,
                      mode="central slice", slices=(), structures=structures, uncertainty_mean=None,
                      quality_score=None, verdict="failed", reasons=(problem,), measures={},
                      flags=(f"failed: {problem}",))


def read_cases(folder: str | Path) -> CaseCollection:
    """The cases of a results folder: one per report, plus the failed scans its cohort summaries list.

    Raises:
        MissingInputError: no such folder.
        InputError: not a folder, unreadable, or it holds no spinesegdiff results.
    """
    folder = Path(folder)
    if not folder.exists():
        raise MissingInputError(folder, "results folder")
    if not folder.is_dir():
        raise InputError(folder, "is not a folder: name the output folder of spinesegdiff predict")
    try:
        reports = sorted(p for p in folder.iterdir() if p.name.endswith(".json") and not p.name.startswith(".")
                         and p.is_file())
        failed = _failed_rows(folder)
    except OSError as err:
        raise InputError(folder, f"cannot read the folder ({err.strerror or err})") from err
    cases: list[CaseRecord] = []
    notes: list[str] = []
    for report in reports:
        try:
            cases.append(read_report(report, folder))
        except InputError as err:
            notes.append(str(err))
    recorded = {c.input for c in cases if c.input}
    taken = {c.case for c in cases}
    for row in failed:
        if row["input"] not in recorded:
            cases.append(_failed_case(row, folder, taken))
            taken.add(cases[-1].case)
            recorded.add(row["input"])
    if not cases:
        left_out = f" ({len(notes)} JSON file{'s' if len(notes) > 1 else ''} that are not)" if notes else ""
        raise InputError(folder, f"holds no spinesegdiff results (<stem>.json reports of predict){left_out}")
    return CaseCollection(folder=folder, cases=tuple(cases), notes=tuple(notes))


def doubt_measure(cases: tuple[CaseRecord, ...] | list[CaseRecord]) -> str:
    """:data:`BY_SCORE` when every result with a report has a quality score, else :data:`BY_UNCERTAINTY`."""
    results = [c for c in cases if not c.failed]
    return BY_SCORE if results and all(c.quality_score is not None for c in results) else BY_UNCERTAINTY


def most_doubtful_first(cases: tuple[CaseRecord, ...] | list[CaseRecord]) -> tuple[list[CaseRecord], str]:
    """The cases ordered for triage, and the measure they are ordered by.

    Failed scans come first, then results without the measure (they need a look), then by quality score, lowest
    first, when every result has one (see :func:`doubt_measure`), else by mean uncertainty, highest first; ties
    by case name.
    """
    measure = doubt_measure(cases)

    def key(case: CaseRecord) -> tuple:
        value = case.quality_score if measure == BY_SCORE else case.uncertainty_mean
        if case.failed:
            return (0, 0.0, case.case)
        if value is None:
            return (1, 0.0, case.case)
        return (2, value if measure == BY_SCORE else -value, case.case)

    return sorted(cases, key=key), measure
