"""DICOM series folders: which image series a folder holds, which one is the scan to segment, and reading it.

A folder exported from a lumbar MRI study often holds several series side by side: sagittal T2 and T1, axial
T2, a three-plane localiser. Every model shipped here was trained on sagittal T2-weighted scans, so the series
read from such a folder (:func:`choose_series`) is, in this order of precedence:

1. not a localiser (``ImageType`` LOCALIZER or SCOUT, or a description such as "survey" or "localiser");
2. sagittal (the slice normal from ``ImageOrientationPatient`` runs left-right) before any other plane;
3. by weighting, from the acquisition's own timing (``EchoTime``, ``RepetitionTime``, ``InversionTime``) and,
   where these are absent, from words of ``SeriesDescription``: T2, then fat-suppressed T2, STIR, unknown, PD,
   and T1 last (the contrast the models know least, docs/RESULTS.md);
4. the most files (a full series before a partial one), then the lowest ``SeriesNumber``.

``--series`` names another one: its ``SeriesInstanceUID``, its ``SeriesNumber``, or words of its
``SeriesDescription`` (case-insensitive). The report says which series was read and why
(:meth:`SeriesChoice.to_dict`). DICOM objects that are not images (a SEG written beside its series, structure
sets, reports) are never series to read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spinesegdiff.data.dicom_multiframe import frame_count, functional_group, read_multiframe_sitk
from spinesegdiff.errors import InputError

NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "SR", "PR", "KO"})
"""DICOM objects that are not images (segmentations, structure sets, reports, presentation states, selections):
never read as a scan, so a folder holding only these is no DICOM series folder, and a DICOM SEG written beside
its series (``--format dicom-seg`` with ``-o`` the series folder) changes neither which series is read nor how."""

WEIGHTINGS: tuple[str, ...] = ("T2", "T2 fat-suppressed", "STIR", "unknown", "PD", "T1")
"""Weightings in order of preference: the models' training contrast first, the one they know least last."""

_HEADER_TAGS = ["Modality", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "ImageType",
                "ImageOrientationPatient", "EchoTime", "RepetitionTime", "InversionTime", "ScanOptions",
                "SharedFunctionalGroupsSequence"]
_ENHANCED_FALLBACKS = {  # where an enhanced MR image keeps what a classic file has at the top level
    "ImageOrientationPatient": (("PlaneOrientationSequence", "ImageOrientationPatient"),),
    "EchoTime": (("MREchoSequence", "EffectiveEchoTime"), ("UnassignedSharedConvertedAttributesSequence", "EchoTime")),
    "RepetitionTime": (("MRTimingAndRelatedParametersSequence", "RepetitionTime"),
                       ("UnassignedSharedConvertedAttributesSequence", "RepetitionTime")),
    "InversionTime": (("MRModifierSequence", "InversionTimes"),
                      ("UnassignedSharedConvertedAttributesSequence", "InversionTime")),
}
_LOCALISER_WORDS = re.compile(r"locali[sz]er|scout|survey|3[- ]?plane|tri[- ]?pilot", re.IGNORECASE)
_FAT_SUPPRESSION_WORDS = re.compile(r"(?<![a-z])(fs|fat[ _-]?sat|spair|spir|dixon)(?![a-z])", re.IGNORECASE)
_DESCRIPTION_WEIGHTINGS = (("STIR", re.compile(r"stir|tirm", re.IGNORECASE)),
                           ("T2", re.compile(r"(?<![0-9])t2(?![0-9])", re.IGNORECASE)),  # sT2W_TSE, SagT2
                           ("T1", re.compile(r"(?<![0-9])t1(?![0-9])", re.IGNORECASE)),  # SagT1; not T12
                           ("PD", re.compile(r"(?<![a-z0-9])pd(?![a-z0-9])|proton", re.IGNORECASE)))


@contextmanager
def itk_warnings_off() -> Iterator[None]:
    """Silence ITK's own stderr warnings (GDCM prints one for every folder without DICOM files)."""
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM image series of a folder, described from its first file's header.

    Attributes:
        uid: ``SeriesInstanceUID`` (``""`` when absent).
        number: ``SeriesNumber``, ``None`` when absent.
        description: ``SeriesDescription`` (``""`` when absent).
        files: its files in GDCM's slice order (position along the slice normal).
        plane: ``sagittal``, ``coronal`` or ``axial`` (the world axis nearest the slice normal), or ``unknown``.
        weighting: one of :data:`WEIGHTINGS`.
        localiser: a localiser or scout series.
        timing_ms: ``{"echo": TE, "repetition": TR, "inversion": TI}`` in ms, the ones the header holds.
        study_uid: ``StudyInstanceUID`` (``""`` when absent).
    """

    uid: str
    number: int | None
    description: str
    files: tuple[Path, ...]
    plane: str
    weighting: str
    localiser: bool
    timing_ms: dict[str, float]
    study_uid: str = ""

    def label(self) -> str:
        """One line for messages: ``series 3 't2_tse_sag' (sagittal, T2, 15 files)``."""
        number = "" if self.number is None else f" {self.number}"
        description = f" {self.description!r}" if self.description else ""
        kind = "localiser" if self.localiser else f"{self.plane}, {self.weighting}"
        return f"series{number}{description} ({kind}, {len(self.files)} files)"

    def to_dict(self) -> dict[str, Any]:
        """The report's description of the series (files as a count)."""
        return {"uid": self.uid, "number": self.number, "description": self.description, "plane": self.plane,
                "weighting": self.weighting, "localiser": self.localiser, "files": len(self.files),
                "timing_ms": dict(self.timing_ms)}


@dataclass(frozen=True)
class SeriesChoice:
    """The series read from a folder (``series``), why (``chosen_by``: ``only``, ``rule`` or ``user``; ``reason``),
    and the folder's other image series."""

    series: SeriesInfo
    chosen_by: str
    reason: str
    others: tuple[SeriesInfo, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The report's ``series`` entry."""
        return {**self.series.to_dict(), "chosen_by": self.chosen_by, "reason": self.reason,
                "others": [other.to_dict() for other in self.others]}


def _number(value: Any) -> float | None:
    """A finite number from a header value (the first of several), else ``None``."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _plane(orientation: Any) -> str:
    """The acquisition plane from ``ImageOrientationPatient`` (LPS: x left-right, y front-back, z head-foot)."""
    values = [_number(v) for v in (orientation or [])]
    if len(values) != 6 or any(v is None for v in values):
        return "unknown"
    normal = np.cross(values[:3], values[3:])
    if not np.any(normal):
        return "unknown"
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def weighting(timing_ms: dict[str, float], description: str = "", scan_options: Sequence[str] = ()) -> str:
    """The series' weighting, one of :data:`WEIGHTINGS`.

    From the timing where the header has it (TE and TR in ms): an inversion time of 100-250 ms with a long TR is
    STIR, one of 500 ms or more with a short TE a T1 FLAIR; TE >= 60 ms is T2 (fat-suppressed when
    ``ScanOptions`` says FS or the description names a fat suppression); TE <= 30 ms with TR <= 1000 ms is T1;
    TE <= 45 ms with TR >= 1500 ms is PD. Otherwise from the description's words (STIR or TIRM, T2, T1, PD),
    else ``unknown``.
    """
    echo, repetition, inversion = (timing_ms.get(key) for key in ("echo", "repetition", "inversion"))
    fat_suppressed = (any(str(option).upper().startswith("FS") or str(option).upper() == "SFS"
                          for option in scan_options) or bool(_FAT_SUPPRESSION_WORDS.search(description)))
    if inversion is not None and 100 <= inversion <= 250 and (repetition is None or repetition >= 1500):
        return "STIR"
    if inversion is not None and inversion >= 500 and echo is not None and echo <= 40:
        return "T1"
    if echo is not None and echo >= 60:
        return "T2 fat-suppressed" if fat_suppressed else "T2"
    if echo is not None and repetition is not None:
        if echo <= 30 and repetition <= 1000:
            return "T1"
        if echo <= 45 and repetition >= 1500:
            return "PD"
    for name, words in _DESCRIPTION_WEIGHTINGS:
        if words.search(description):
            return "T2 fat-suppressed" if name == "T2" and fat_suppressed else name
    return "unknown"


def _header(file: str):
    """The first file's header (no pixels), or ``None`` when pydicom cannot read it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(file, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, ValueError):
        return None


def _describe(files: tuple[str, ...]) -> SeriesInfo | None:
    """A series from its files' first header; ``None`` for objects that are not images."""
    header = _header(files[0])

    def get(name: str, default: Any = None) -> Any:
        """The header's value, an enhanced image's from its shared functional groups, else ``default``."""
        if header is None:
            return default
        value = header.get(name)
        for sequence, attribute in _ENHANCED_FALLBACKS.get(name, ()) if value in (None, "") else ():
            item = functional_group(header, 0, sequence)
            value = None if item is None else item.get(attribute)
            if value not in (None, ""):
                break
        return default if value in (None, "") else value

    if str(get("Modality", "")) in NON_IMAGE_MODALITIES:
        return None
    description = str(get("SeriesDescription", "") or "")
    timing = {key: value for key, value in (("echo", _number(get("EchoTime"))),
                                            ("repetition", _number(get("RepetitionTime"))),
                                            ("inversion", _number(get("InversionTime")))) if value is not None}
    image_type = {str(value).upper() for value in (get("ImageType") or [])}
    options = get("ScanOptions") or []
    options = [options] if isinstance(options, str) else list(options)
    number = _number(get("SeriesNumber"))
    return SeriesInfo(uid=str(get("SeriesInstanceUID", "") or ""), number=None if number is None else int(number),
                      description=description, files=tuple(Path(file) for file in files),
                      plane=_plane(get("ImageOrientationPatient")),
                      weighting=weighting(timing, description, options),
                      localiser=bool(image_type & {"LOCALIZER", "SCOUT"}) or bool(_LOCALISER_WORDS.search(description)),
                      timing_ms=timing, study_uid=str(get("StudyInstanceUID", "") or ""))


def image_series(folder: str | Path) -> list[SeriesInfo]:
    """The DICOM image series GDCM finds in ``folder`` (not its subfolders), in GDCM's order; objects that are not
    images (:data:`NON_IMAGE_MODALITIES`) are left out."""
    import SimpleITK as sitk

    with itk_warnings_off():
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        file_lists = [tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in series_ids]
    described = (_describe(files) for files in file_lists if files)
    return [series for series in described if series is not None]


def is_dicom_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding at least one DICOM image series that GDCM recognises."""
    path = Path(path)
    return path.is_dir() and bool(image_series(path))


def _preference(series: SeriesInfo) -> tuple:
    """Sort key of :func:`choose_series`'s rule: smaller is preferred."""
    return (series.localiser, series.plane != "sagittal", WEIGHTINGS.index(series.weighting), -len(series.files),
            series.number if series.number is not None else float("inf"), series.uid)


def _matching(series: list[SeriesInfo], wanted: str) -> list[SeriesInfo]:
    """The series ``wanted`` names: its UID, its number, else words of its description."""
    text = wanted.strip()
    by_uid = [s for s in series if s.uid and s.uid == text]
    if by_uid:
        return by_uid
    if text.isdigit():
        return [s for s in series if s.number == int(text)]
    return [s for s in series if text.lower() in s.description.lower()]


def choose_series(folder: str | Path, wanted: str | None = None) -> SeriesChoice:
    """The series to read from a DICOM folder: the one ``wanted`` names, else the preferred one (module doc).

    Raises:
        InputError: no DICOM image series in the folder, or ``wanted`` names none or several of them (the
            message lists the folder's series).
    """
    folder = Path(folder)
    series = image_series(folder)
    if not series:
        raise InputError(folder, "folder holds no DICOM series")
    return choose_among(series, wanted, folder)


def choose_among(series: Sequence[SeriesInfo], wanted: str | None, where: Path) -> SeriesChoice:
    """:func:`choose_series` among given series (of one folder, or of one study's folders); ``where`` is the path
    an error names.

    Raises:
        InputError: ``wanted`` names none or several of ``series`` (the message lists them).
    """
    series = list(series)
    listing = "; ".join(s.label() for s in sorted(series, key=_preference))
    if wanted is not None:
        if not wanted.strip():
            raise InputError(where, "--series is empty: give a SeriesInstanceUID, a SeriesNumber or words of a "
                                    "SeriesDescription")
        matches = _matching(series, wanted)
        if len(matches) != 1:
            found = "no series" if not matches else f"{len(matches)} series"
            raise InputError(where, f"--series {wanted!r} matches {found}; the folder holds: {listing}")
        chosen, chosen_by, reason = matches[0], "user", f"--series {wanted}"
    else:
        chosen = min(series, key=_preference)
        chosen_by = "only" if len(series) == 1 else "rule"
        reason = "the folder's only image series" if len(series) == 1 else _reason(chosen, len(series))
    others = tuple(s for s in sorted(series, key=_preference) if s is not chosen)
    return SeriesChoice(series=chosen, chosen_by=chosen_by, reason=reason, others=others)


def _reason(chosen: SeriesInfo, count: int) -> str:
    """Why the rule took ``chosen`` among ``count`` series, in words for the report."""
    kind = "localiser" if chosen.localiser else f"{chosen.plane} {chosen.weighting}"
    why = ("the models were trained on sagittal T2-weighted scans" if not chosen.localiser
           and chosen.plane == "sagittal" and chosen.weighting == "T2" else
           "no sagittal T2-weighted series without fat suppression is there; the models were trained on one")
    return f"{kind}, preferred among {count} image series: {why} (--series chooses another)"


MAX_STUDY_DEPTH = 8
"""How many folder levels below a study export's root are searched for DICOM series."""


def series_in_tree(root: str | Path) -> list[list[SeriesInfo]]:
    """The DICOM image series in the folders below ``root`` (not ``root`` itself; at most :data:`MAX_STUDY_DEPTH`
    levels down; hidden folders left out), grouped by study (``StudyInstanceUID``; a series without one is its
    own study), studies and their series in path order: a PACS or CD export (``DICOM/ST000/SE003/IM0001``)."""
    root = Path(root)
    found: list[SeriesInfo] = []
    for folder, subfolders, _ in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")) \
            if depth < MAX_STUDY_DEPTH else []
        if depth > 0:
            found += image_series(folder)
    return by_study(found)


def by_study(series: Sequence[SeriesInfo]) -> list[list[SeriesInfo]]:
    """``series`` grouped by ``StudyInstanceUID`` (a series without one is its own study), in their order."""
    studies: dict[str, list[SeriesInfo]] = {}
    for info in series:
        studies.setdefault(info.study_uid or f"{info.files[0].parent}/{info.uid}", []).append(info)
    return list(studies.values())


def dicom_series_files(folder: str | Path, wanted: str | None = None) -> tuple[Path, ...]:
    """The files of the series :func:`read_dicom_series` reads from ``folder``, in its order: file ``z`` is slice
    ``z``. GDCM orders the files by position along the slice normal, not by name.

    Raises:
        InputError: see :func:`choose_series`.
    """
    return choose_series(folder, wanted).series.files


def read_dicom_series(folder: str | Path, wanted: str | SeriesInfo | None = None):
    """The series :func:`choose_series` takes as a ``SimpleITK.Image``, after :func:`check_dicom_slices`; a series
    stored as one enhanced multi-frame file is read by :func:`~spinesegdiff.data.dicom_multiframe.read_multiframe`.
    ``wanted`` may be a series chosen already (a :class:`SeriesInfo` of ``folder``): the folder is not searched
    again.

    Raises:
        InputError: see :func:`choose_series` and :func:`check_dicom_slices`.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    chosen = wanted.files if isinstance(wanted, SeriesInfo) else dicom_series_files(folder, wanted)
    files = [str(file) for file in chosen]
    if frame_count(files[0]):  # an enhanced image: its frames are the slices
        if len(files) > 1:
            raise InputError(folder, f"the series is stored as {len(files)} multi-frame files, not one: give one of "
                                     "them as the input")
        return read_multiframe_sitk(files[0])
    check_dicom_slices(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _slice_position(file: str) -> float | None:
    """Position (mm) of a DICOM slice along its normal; ``None`` when the file cannot be read whole."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        with itk_warnings_off():
            plane = reader.Execute()
        expected = reader.GetSize()[0] * reader.GetSize()[1]
        orientation = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
        position = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
    except (RuntimeError, ValueError):
        return None
    if sitk.GetArrayViewFromImage(plane).size < expected:
        return None
    return float(np.dot(np.cross(orientation[:3], orientation[3:6]), position))


def check_dicom_slices(folder: Path, files: Sequence[str]) -> None:
    """Every file of the series must read whole, and the slices must be evenly spaced (none missing).

    Raises:
        InputError: naming the folder and the broken file(s), or where the spacing jumps.
    """
    positions = {file: _slice_position(file) for file in files}
    broken = [Path(file).name for file, position in positions.items() if position is None]
    if broken:
        raise InputError(folder, f"DICOM series has {len(broken)} unreadable or cut-short file(s): "
                                 f"{', '.join(broken[:5])}{' ...' if len(broken) > 5 else ''}")
    if len(files) < 3:
        return
    ordered = sorted(positions.items(), key=lambda item: item[1])
    gaps = np.diff([position for _, position in ordered])
    step = float(np.median(gaps))
    uneven = [k for k, gap in enumerate(gaps) if abs(gap - step) > 0.1 * max(step, 1e-3)]
    if step <= 0 or uneven:
        k = uneven[0] if uneven else 0
        series = {Path(file).name for file in files}
        strays = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in series
                        and not p.name.startswith("."))
        unread = f"; files not read as part of it: {', '.join(strays[:5])}" if strays else ""
        raise InputError(folder, f"DICOM slices are not evenly spaced (a slice missing or duplicated?): "
                                 f"{gaps[k]:.2f} mm between {Path(ordered[k][0]).name} and "
                                 f"{Path(ordered[k + 1][0]).name}, {step:.2f} mm elsewhere{unread}")
