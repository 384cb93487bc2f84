"""Which inputs of ``spinesegdiff predict`` are scans, and where their outputs go: all decided before any work.

:func:`scan_inputs` reads the input once:

- a folder's image files (endings matched in any case: ``A.MHA`` is a ``.mha``) and DICOM series folders are
  the candidates; hidden files are left alone;
- of the DICOM series in a folder's subfolders (or, in a folder holding no scan, further down: a PACS or CD
  export), one per study is segmented, the one ``predict`` would read from a folder holding them all (sagittal
  T2 by default, or the one ``--series`` names); each other series is left out with a note naming the one taken;
- a file an earlier run wrote (named under ``"outputs"`` in the ``<stem>.json`` report beside it) is skipped
  with a note, so running ``predict -i DIR -o DIR`` twice does not segment its own label maps;
- a label map (an integer image whose sampled voxels take 2 to :data:`MAX_LABEL_VALUES` distinct non-negative
  values, such as ``*_msk.nii.gz`` beside the scans) is skipped with a note; named alone with ``-i`` it is an
  error;
- a broken symbolic link is an error for that file, and the batch goes on.

:func:`plan_outputs` then names every scan's four outputs. Two scans with the same stem (``a.mha`` and
``a.nii.gz``) get their ending in the stem (``a_mha_seg.mha``, ``a_nii_gz_seg.nii.gz``, ...); the batch is refused
before any work when two scans would still write one file, or when an output would replace an input (a file
in the input folder that spinesegdiff did not write, also through a symbolic link). :func:`check_output_folder`
refuses an output folder that is a file or cannot be written.

For a cohort split over machines, :func:`parse_shard` reads ``--shard K/N`` and :func:`select_shard` keeps shard K
of the plan: round-robin over the plan in name order (scan ``i``, 0-based, goes to shard ``i % N + 1``), so every
scan is in exactly one shard and shards differ by at most one scan, whatever the order of the names; machines
that see the same input folder agree without talking. :func:`complete_outputs` tells whether a scan's output set
from an earlier run is complete (``--skip-existing``).

:func:`checked_image` checks the ``image`` argument of the Python API (a path or ``(array_zyx, Geometry)``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinesegdiff.data.dicom_series import (
    SeriesInfo,
    by_study,
    choose_among,
    image_series,
    is_dicom_folder,
    series_in_tree,
)
from spinesegdiff.data.io import IMAGE_IOS, Geometry, image_stem, image_suffix
from spinesegdiff.errors import InputError, MissingInputError, SpineSegDiffError
from spinesegdiff.pipelines.settings import NAMED_FORMATS, uncertainty_suffix

MAX_LABEL_VALUES = 16
"""An integer image with at most this many distinct values (and at least 2, none negative) is a label map."""
LABEL_SAMPLE = 100_000
"""About this many voxels, evenly strided, are looked at to tell a label map from a scan."""
_SIDECAR_LIMIT = 1 << 20
"""A report is a few kB; a larger ``.json`` is not one of ours and is not parsed."""
_OUTPUT_NAME = re.compile(r"^(?P<stem>.+)_(?:seg|uncertainty)(?P<suffix>\.[^_]+)$")


@dataclass(frozen=True)
class Skipped:
    """An input that is not segmented: a note (a label map, an earlier output) or an error (a broken link)."""

    path: Path
    problem: str
    error: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class ScanInputs:
    """What :func:`scan_inputs` found.

    Attributes:
        scans: the scans to segment (image files and DICOM folders), in name order.
        skipped: the inputs left out, each with its note or error, in name order.
        protected: every input file that must never be written, resolved path -> the path as found.
    """

    scans: tuple[Path, ...]
    skipped: tuple[Skipped, ...]
    protected: dict[Path, Path]


@dataclass(frozen=True)
class PlannedScan:
    """One scan of a batch and the files it will be written to (keys as :func:`write_outputs` returns them)."""

    scan: Path
    stem: str
    outputs: dict[str, Path]


def sidecar_outputs(report: Path) -> set[str]:
    """The file names a spinesegdiff report (``<stem>.json``) lists as its outputs; empty for any other file.

    Only names an earlier run can have written for that stem count (``<stem>_seg<ext>``,
    ``<stem>_uncertainty<ext>``, ``<stem>_overlay.png``, ``<stem>.json``): a report cannot claim other files.
    """
    try:
        if not report.is_file() or report.stat().st_size > _SIDECAR_LIMIT:
            return set()
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return set()
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, dict) or "segmentation" not in outputs:
        return set()
    stem = report.name[: -len(".json")]
    return {name for name in outputs.values() if isinstance(name, str) and _is_output_name(name, stem)}


def _is_output_name(name: str, stem: str) -> bool:
    if name in (f"{stem}.json", f"{stem}_overlay.png"):
        return True
    match = _OUTPUT_NAME.match(name)
    return bool(match and match["stem"] == stem and _output_ending(name))


def _output_ending(name: str) -> str:
    """The ending of an output's file name: an image's, or a named format's label file (``a_seg.dcm``); else ``""``.

    A ``.dcm`` counts only as a label file: never as an input scan, nor as an uncertainty map.
    """
    named = (ending for ending in NAMED_FORMATS.values() if name.lower().endswith(f"_seg{ending}"))
    return image_suffix(name) or next(named, "")


def written_by_spinesegdiff(path: Path) -> Path | None:
    """The report that lists ``path`` as an output of an earlier run (``a_seg.mha`` -> ``a.json``), or ``None``."""
    match = _OUTPUT_NAME.match(path.name)
    if not match or not _output_ending(path.name):
        return None
    report = path.with_name(f"{match['stem']}.json")
    return report if path.name in sidecar_outputs(report) else None


def label_values(path: Path) -> tuple[int, ...] | None:
    """The values of a label map (an integer image with few distinct non-negative values), else ``None``.

    The header is read first; only an integer image's voxels are read, and about :data:`LABEL_SAMPLE` of them
    looked at. An unreadable file is not a label map here (reading it as a scan reports the problem).
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if image_suffix(path) in IMAGE_IOS:
        reader.SetImageIO(IMAGE_IOS[image_suffix(path)])
    integers = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
                sitk.sitkUInt64, sitk.sitkInt64}
    try:
        reader.ReadImageInformation()
        if reader.GetPixelID() not in integers or reader.GetNumberOfComponents() != 1:
            return None
        voxels = sitk.GetArrayFromImage(reader.Execute()).ravel()
    except RuntimeError:
        return None
    values = np.unique(voxels[:: max(1, voxels.size // LABEL_SAMPLE)])
    if 2 <= values.size <= MAX_LABEL_VALUES and values[0] >= 0:
        return tuple(int(v) for v in values)
    return None


def _label_note(values: tuple[int, ...]) -> str:
    return f"a label map (values {', '.join(map(str, values))}), not a scan"


def _broken_link(path: Path) -> str:
    return f"broken symbolic link (its target {os.readlink(path)} does not exist)"


def _real(path: Path) -> Path:
    """``path`` with every symbolic link followed (a loop or a missing part ends the walk without an error)."""
    return Path(os.path.realpath(path))


def _keys(path: Path) -> tuple[Path, Path]:
    """Where ``path`` is: its folder resolved with its own name (a link stays the link), and where it leads."""
    return _real(path.absolute().parent) / path.name, _real(path)


def _protect(protected: dict[Path, Path], path: Path) -> None:
    for key in _keys(path):
        protected[key] = path
    if path.is_dir():  # a DICOM series folder: its files, not those a report there lists (-o same as -i)
        try:
            children = list(path.iterdir())
            ours = {name for child in children if child.name.endswith(".json") for name in sidecar_outputs(child)}
            for child in children:
                if child.name not in ours:
                    protected[_real(child)] = child
        except OSError:
            pass  # a folder that cannot be listed cannot be written into either


def scan_inputs(path: str | Path, *, series: str | None = None) -> ScanInputs:
    """One scan (file or DICOM folder), or the scans in a folder (image files and DICOM subfolders), or, for a
    folder holding neither, one series per study of the DICOM export below it (:func:`_study_inputs`; ``series``
    names the series to take of each study, as ``--series`` does).

    Raises:
        MissingInputError: ``path`` does not exist.
        InputError: a broken link, a label map or an earlier output named alone; a folder without scans or
            that cannot be read.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(path, _broken_link(path))
    if not path.exists():
        raise MissingInputError(path)
    protected: dict[Path, Path] = {}
    if path.is_file() or is_dicom_folder(path):
        report = written_by_spinesegdiff(path) if path.is_file() else None
        if report is not None:
            raise InputError(path, f"is an output of spinesegdiff (listed in {report.name}), not a scan")
        values = label_values(path) if path.is_file() else None
        if values is not None:
            raise InputError(path, f"is {_label_note(values)}: name the scan it labels")
        _protect(protected, path)
        return ScanInputs(scans=(path,), skipped=(), protected=protected)
    return _scan_folder(path, series)


def _scan_folder(folder: Path, series: str | None = None) -> ScanInputs:
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise InputError(folder, f"cannot read the folder ({err.strerror or err})") from err
    ours = {name: p.name for p in entries if p.name.endswith(".json") for name in sidecar_outputs(p)}
    scans: list[Path] = []
    skipped: list[Skipped] = []
    protected: dict[Path, Path] = {}
    dicom: list[SeriesInfo] = []
    for entry in entries:
        if entry.name in ours:
            if _output_ending(entry.name):
                skipped.append(Skipped(entry, f"skipped: an output of spinesegdiff (listed in {ours[entry.name]})"))
            continue
        _protect(protected, entry)
        if entry.is_symlink() and not entry.exists():
            if image_suffix(entry) or not entry.suffix:
                skipped.append(Skipped(entry, _broken_link(entry), error=True))
        elif entry.is_file() and image_suffix(entry):
            values = label_values(entry)
            if values is None:
                scans.append(entry)
            else:
                skipped.append(Skipped(entry, f"skipped: {_label_note(values)}"))
        elif entry.is_dir():
            dicom += image_series(entry)  # a DICOM series folder's series (none for any other folder)
    studies = by_study(dicom)
    if not scans and not studies and not any(s.error for s in skipped):
        studies = series_in_tree(folder)  # an export: the series lie further down
        if not studies:
            left_out = f" ({len(skipped)} skipped: label maps or outputs of spinesegdiff)" if skipped else ""
            raise InputError(folder, "folder holds no scans (.mha, .nii, .nii.gz, .nrrd files or DICOM series)"
                                     + left_out)
    if studies:
        chosen = _study_inputs(studies, series, protected)
        scans, skipped = sorted([*scans, *chosen.scans]), [*skipped, *chosen.skipped]
    return ScanInputs(scans=tuple(scans), skipped=tuple(skipped), protected=protected)


def _study_inputs(studies: list[list[SeriesInfo]], wanted: str | None, protected: dict[Path, Path]) -> ScanInputs:
    """The DICOM series folders' scans (subfolders of the input, or further down in an export): of each study,
    the folder of the series ``predict`` would take from one folder holding them all
    (:func:`~spinesegdiff.data.dicom_series.choose_series`: sagittal T2 by default, or the one ``wanted`` names);
    each of its other series is left out with a note saying which was taken, and a study without the ``wanted``
    series is an error for that study."""
    scans: list[Path] = []
    skipped: list[Skipped] = []
    for study in studies:
        first = study[0].files[0].parent
        try:
            choice = choose_among(study, wanted, first)
        except InputError as err:
            skipped.append(Skipped(first, f"a study of {len(study)} series: {err.problem}", error=True))
            continue
        chosen = choice.series.files[0].parent
        scans.append(chosen)
        for other in choice.others:
            folder = other.files[0].parent
            if folder != chosen:
                skipped.append(Skipped(folder, f"skipped: {other.label()}; of its study, {chosen.name}'s "
                                               f"{choice.series.label()} is segmented (--series names another)"))
    for folder in dict.fromkeys(info.files[0].parent for study in studies for info in study):
        _protect(protected, folder)  # each series folder once, however many series it holds
    return ScanInputs(scans=tuple(dict.fromkeys(scans)), skipped=tuple(skipped), protected=protected)


def scan_list_inputs(list_file: str | Path, *, where: dict[str, str] | None = None) -> ScanInputs:
    """The scans an input list names (:func:`~spinesegdiff.pipelines.input_list.read_input_list`), in its order.

    Each entry is judged as :func:`scan_inputs` judges a folder's entries: an earlier output or a label map is left
    out with a note; a missing path, a broken link, a folder without a DICOM series or a file that is not an image
    is an error for that entry (naming the list's line), and the batch goes on.

    Raises:
        MissingInputError, InputError: the list itself cannot be read or names nothing (see ``read_input_list``),
            or every entry was left out with a note.
    """
    from spinesegdiff.pipelines.input_list import read_input_list

    scans: list[Path] = []
    skipped: list[Skipped] = []
    protected: dict[Path, Path] = {}
    for entry in read_input_list(list_file, where=where):
        path, where_listed = entry.path, f"(line {entry.line} of {Path(list_file).name})"
        problem = _listed_problem(path)
        if problem is not None:
            skipped.append(Skipped(path, f"{problem} {where_listed}", error=True))
            continue
        report = written_by_spinesegdiff(path) if path.is_file() else None
        values = label_values(path) if path.is_file() and report is None else None
        if report is not None:
            skipped.append(Skipped(path, f"skipped: an output of spinesegdiff (listed in {report.name})"))
        elif values is not None:
            skipped.append(Skipped(path, f"skipped: {_label_note(values)}"))
        else:
            _protect(protected, path)
            scans.append(path)
    if not scans and not any(s.error for s in skipped):
        raise InputError(list_file, f"input list names no scans ({len(skipped)} skipped: label maps or outputs of "
                                    "spinesegdiff)")
    return ScanInputs(scans=tuple(scans), skipped=tuple(skipped), protected=protected)


def _listed_problem(path: Path) -> str | None:
    """Why a listed path is not a scan to read (``None``: a file with an image ending or a DICOM folder)."""
    if path.is_symlink() and not path.exists():
        return _broken_link(path)
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return None if is_dicom_folder(path) else "is a folder without a DICOM series"
    if not image_suffix(path):
        return "is not a scan file (.mha, .mhd, .nii, .nii.gz, .nrrd, .nhdr) or a DICOM series folder"
    return None


def _distinct_stems(scans: tuple[Path, ...]) -> dict[Path, str]:
    """Each scan's output stem: its own; with its ending (``a_mha``, ``a_nii_gz``) when another shares it; and
    with its folder's name in front (``p01_t2_mha``) when scans of several folders (an input list, a DICOM export)
    still share it, and as many folders above as make them differ (``ST1_SE3``, ``ST2_SE3``)."""
    by_stem: dict[str, list[Path]] = {}
    for scan in scans:
        by_stem.setdefault(image_stem(scan), []).append(scan)
    stems: dict[Path, str] = {}
    for stem, group in by_stem.items():
        for scan in group:
            ending = image_suffix(scan).lstrip(".").replace(".", "_") if scan.is_file() else "dicom"
            stems[scan] = stem if len(group) == 1 else f"{stem}_{ending or 'file'}"
        named = [stems[scan] for scan in group]
        clashing = [scan for scan in group if named.count(stems[scan]) > 1]
        deepest = max((len(scan.absolute().parent.parts) for scan in clashing), default=0)
        prefixed: dict[Path, str] = {}
        for depth in range(1, deepest + 1):  # more of the folders in front until the stems differ
            prefixed = {scan: _with_folders(scan, stems[scan], depth) for scan in clashing}
            if len(set(prefixed.values())) == len(clashing):
                break
        stems.update(prefixed)
    return stems


def _with_folders(scan: Path, stem: str, depth: int) -> str:
    """``stem`` with the names of the ``depth`` folders above ``scan`` in front (``ST1_SE3_stem``; the file
    system's root is ``root``)."""
    folders = [part for part in scan.absolute().parent.parts[-depth:] if part != scan.absolute().anchor]
    return "_".join([*(folders or ["root"]), stem])


def plan_outputs(inputs: ScanInputs, output: str | Path, *, suffix_of: Callable[[Path], str],
                 ) -> tuple[PlannedScan, ...]:
    """Name every scan's four outputs in ``output``; refuse the batch if one would replace an input.

    Args:
        inputs: what :func:`scan_inputs` found.
        output: the output folder.
        suffix_of: the image ending of a scan's label and uncertainty outputs (``.mha``, ``.nii.gz``, ...).

    Raises:
        InputError: two scans would write the same file, or an output would replace an input file.
    """
    output = Path(output)
    stems = _distinct_stems(inputs.scans)
    planned: list[PlannedScan] = []
    writers: dict[Path, Path] = {}
    for scan in inputs.scans:
        stem, suffix = stems[scan], suffix_of(scan)
        outputs = {"segmentation": output / f"{stem}_seg{suffix}",
                   "uncertainty": output / f"{stem}_uncertainty{uncertainty_suffix(suffix)}",
                   "overlay": output / f"{stem}_overlay.png",
                   "report": output / f"{stem}.json"}
        for path in outputs.values():
            for key in _keys(path):
                if key in inputs.protected:
                    raise InputError(inputs.protected[key], f"is an input, and the output {path.name} of "
                                                            f"{scan.name} would replace it: choose another "
                                                            "output folder")
            other = writers.setdefault(_real(path), scan)
            if other != scan:
                raise InputError(scan, f"and {other} would both write {path}: rename one of them")
        planned.append(PlannedScan(scan=scan, stem=stem, outputs=outputs))
    return tuple(planned)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: the scans ``i`` (0-based, in plan order) with
    ``i % count == index - 1``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | None) -> Shard | None:
    """``"2/4"`` -> ``Shard(2, 4)``; ``None`` stays ``None`` (the whole plan).

    Raises:
        SpineSegDiffError: not ``K/N`` with whole numbers ``1 <= K <= N`` (one line naming ``--shard``).
    """
    if text is None:
        return None
    match = _SHARD.match(text)
    expected = "expected K/N with 1 <= K <= N, such as 1/4 (shard K of N, counted from 1)"
    if not match:
        raise SpineSegDiffError(f"--shard {text!r}: {expected}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 1 <= index <= count:
        raise SpineSegDiffError(f"--shard {text!r}: {expected}")
    return Shard(index, count)


def select_shard(plan: tuple[PlannedScan, ...], shard: Shard | None) -> tuple[PlannedScan, ...]:
    """The scans of ``shard`` (round-robin over ``plan``, which is in name order); all of them for ``None``."""
    if shard is None:
        return plan
    return plan[shard.index - 1 :: shard.count]


def complete_outputs(planned: PlannedScan) -> bool:
    """Whether an earlier run left ``planned``'s whole output set: all four files, listed by its ``<stem>.json``.

    The report must list every planned file (a set without its JSON, or from another ``--format``, is not
    complete) and name an input of the same file name (another scan with the same stem is not this one).
    """
    report = planned.outputs["report"]
    listed = sidecar_outputs(report)
    if not all(path.name in listed and path.is_file() for path in planned.outputs.values()):
        return False
    try:
        source = json.loads(report.read_text(encoding="utf-8")).get("input")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False
    return isinstance(source, str) and Path(source).name == planned.scan.name


def check_output_folder(output: str | Path) -> None:
    """Refuse an output folder that is a file, a broken link, or cannot be written or created (nothing is made).

    Raises:
        InputError: naming the folder (or the file in the way) and the problem.
    """
    output = Path(output)
    if output.is_symlink() and not output.exists():
        raise InputError(output, f"output folder is a {_broken_link(output)}")
    if output.exists():
        if not output.is_dir():
            raise InputError(output, "is a file, not a folder: the outputs go into a folder")
        if not os.access(output, os.W_OK | os.X_OK):
            raise InputError(output, "output folder is not writable")
        return
    ancestor = next((p for p in output.parents if p.exists()), Path.cwd())
    if not ancestor.is_dir():
        raise InputError(ancestor, f"is a file, so the output folder {output} cannot be created")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(output, f"cannot create the output folder (no permission to write in {ancestor})")


def checked_image(image: object) -> Path | tuple[np.ndarray, Geometry]:
    """The ``image`` argument of :func:`~spinesegdiff.pipelines.predict.load_scan`, checked.

    Returns:
        a :class:`~pathlib.Path`, or ``(array, geometry)`` with ``array`` a non-empty real 3D numpy array.

    Raises:
        TypeError: neither a path nor a ``(array_zyx, Geometry)`` tuple.
        InputError: an empty, complex or non-3D array, or a geometry that is not 3D.
    """
    expected = "a path (str or pathlib.Path) or a tuple (array_zyx, Geometry)"
    if isinstance(image, str | os.PathLike):
        return Path(image)
    if not isinstance(image, tuple):
        raise TypeError(f"image must be {expected}, got {type(image).__name__}")
    if len(image) != 2:
        raise TypeError(f"image must be {expected}, got a tuple of {len(image)} items")
    array, geometry = image
    if not isinstance(geometry, Geometry):
        raise TypeError(f"the second item of the image tuple must be a spinesegdiff Geometry (spacing, origin, "
                        f"direction), got {type(geometry).__name__}")
    if not isinstance(array, np.ndarray):
        raise TypeError(f"the first item of the image tuple must be a numpy array (z, y, x), got "
                        f"{type(array).__name__}")
    if np.iscomplexobj(array):
        raise InputError(None, f"array is complex ({array.dtype}): a real-valued scan is expected (for example "
                               "its magnitude, numpy.abs)")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"the array must hold numbers, got dtype {array.dtype}")
    if array.ndim != 3:
        raise InputError(None, f"array is {array.ndim}D (shape {array.shape}), a 3D volume (z, y, x) is expected")
    if array.size == 0:
        raise InputError(None, f"array is empty (shape {array.shape}), a 3D volume (z, y, x) is expected")
    if geometry.dimension != 3:
        raise InputError(None, f"geometry is {geometry.dimension}D, a 3D geometry is expected")
    return array, geometry
