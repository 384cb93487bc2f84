"""DICOM Segmentation objects (``--format dicom-seg``): a scan's label map as a SEG instance made with highdicom.

A label map made from a DICOM series is written as one DICOM Segmentation (Modality SEG, Segmentation Storage,
``BINARY``) that a PACS files with its source study and a viewer (3D Slicer, OHIF, ...) lays over the series:

- the source's patient, study and frame of reference (PatientID, StudyInstanceUID, FrameOfReferenceUID) are
  copied, and a new series and instance are made (SeriesInstanceUID, SOPInstanceUID);
- every source instance is referenced (ReferencedSeriesSequence), and each frame names the source slice it
  segments and its position (Derivation Image and Plane Position per frame);
- one segment per structure of the shipped label table (:mod:`spinesegdiff.data.label_table`): its name as
  the segment label, its colour (CIELab), its SNOMED CT code as the segmented property type (category
  "Anatomical Structure", anatomic region "Lumbar spine", both from the DICOM standard's code tables as pydicom
  ships them), and the algorithm (name ``SpineSegDiff``, family "Artificial Intelligence", the package version).

Frames: slice ``z`` of the ``(z, y, x)`` label map belongs to file ``z`` of the series in the order
:func:`spinesegdiff.data.io.read_image` stacks them (:func:`~spinesegdiff.data.dicom_series.dicom_series_files`, the one
function both use, so the two never disagree); its ``(y, x)`` plane is the file's ``(Rows, Columns)``. Frames
without a segmented pixel are left out (the central-slice mode segments one sagittal slice), but a segment with
no pixel keeps its description. The disc's SNOMED CT code in the label table is not yet checked (docs/FORMATS.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spinesegdiff import __version__
from spinesegdiff.data.dicom_multiframe import frame_count
from spinesegdiff.data.dicom_series import dicom_series_files
from spinesegdiff.data.label_table import LabelTable, label_table
from spinesegdiff.errors import InputError
from spinesegdiff.files import atomic_write

if TYPE_CHECKING:
    import highdicom
    from pydicom.dataset import Dataset

DICOM_SEG_SUFFIX = ".dcm"
"""The ending of a DICOM Segmentation file (``<stem>_seg.dcm``)."""
ALGORITHM_NAME = "SpineSegDiff"
MANUFACTURER = "spinesegdiff"
SERIES_DESCRIPTION = "SpineSegDiff segmentation"
CONTENT_LABEL = "SPINESEGDIFF"
"""ContentLabel is a code string: upper case, at most 16 characters."""
CONTENT_CREATOR = "SpineSegDiff^"
"""ContentCreatorName (a person name; the trailing caret says a one-part name is meant)."""
DEVICE_SERIAL_NUMBER = "none"
"""DeviceSerialNumber is required (Type 1) of the equipment that made the object; software has none."""
SERIES_NUMBER_OFFSET = 1000
"""The SEG series takes the source's SeriesNumber plus this (1000 when the source has none)."""
_NEEDED = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "ImagePositionPatient",
           "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
"""What a source file must hold for a SEG to reference it and place its frame."""


@dataclass(frozen=True)
class SourceSeries:
    """The DICOM series a label map was made from.

    Attributes:
        folder: the series folder.
        files: its files in the reader's slice order (file ``z`` is slice ``z`` of the label map).
        datasets: their headers (pixel data not read), in the same order.
    """

    folder: Path
    files: tuple[Path, ...]
    datasets: tuple[Dataset, ...]


def read_source_series(folder: str | Path, wanted_series: str | None = None) -> SourceSeries:
    """The headers of the series :func:`~spinesegdiff.data.io.read_image` reads from ``folder``, in its order
    (``wanted_series``: which one, in a folder of several; see :func:`~spinesegdiff.data.dicom_series.choose_series`).

    Raises:
        InputError: not a DICOM series folder, a file that cannot be read, or one that lacks what a SEG needs
            (the message names the file and the attribute).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is not a DICOM series folder: a DICOM Segmentation references the instances "
                                 "of a DICOM series")
    files = dicom_series_files(folder, wanted_series)
    if frame_count(files[0]):
        raise InputError(files[0], "is a multi-frame (enhanced) image: --format dicom-seg references the files of a "
                                   "single-frame series (choose another --format)")
    datasets = []
    for file in files:
        try:
            dataset = pydicom.dcmread(file, stop_before_pixels=True, force=True)  # GDCM took it as DICOM
        except (InvalidDicomError, OSError) as err:
            raise InputError(file, f"cannot read the DICOM file ({err})") from err
        missing = [name for name in _NEEDED if name not in dataset or dataset[name].value in (None, "")]
        if missing:
            raise InputError(file, f"lacks {', '.join(missing)}: a DICOM Segmentation needs them to reference "
                                   "and place each slice")
        datasets.append(dataset)
    return SourceSeries(folder=folder, files=files, datasets=tuple(datasets))


def segment_numbers(labels_zyx: np.ndarray, series: SourceSeries, table: LabelTable) -> np.ndarray:
    """The label map with each structure's value replaced by its segment number (1, 2, ... in table order).

    Raises:
        InputError: the label map's grid is not the series' (slices, Rows, Columns).
        ValueError: not 3D, or a value that is neither background nor a structure of ``table``.
    """
    labels = np.asarray(labels_zyx)
    if labels.ndim != 3:
        raise ValueError(f"a DICOM Segmentation needs a 3D label map (z, y, x), got {labels.ndim}D")
    grids = {(int(ds.Rows), int(ds.Columns)) for ds in series.datasets}
    if labels.shape[0] != len(series.files) or grids != {labels.shape[1:]}:
        raise InputError(series.folder, f"DICOM series has {len(series.files)} slices of "
                                        f"{' or '.join(f'{r} x {c}' for r, c in sorted(grids))} pixels, but the "
                                        f"label map {labels.shape[0]} of {labels.shape[1]} x {labels.shape[2]}: "
                                        "did the folder change since it was read?")
    values = [table.background, *(s.value for s in table.structures)]
    unknown = np.setdiff1d(np.unique(labels), values)
    if unknown.size:
        raise ValueError(f"label values {unknown.tolist()} are not in the label table ({values})")
    lookup = np.zeros(max(values) + 1, dtype=np.uint8)
    for number, structure in enumerate(table.structures, start=1):
        lookup[structure.value] = number
    return lookup[labels.astype(np.intp)]


def segment_descriptions(table: LabelTable, parameters: Mapping[str, str] | None = None,
                         ) -> list[highdicom.seg.SegmentDescription]:
    """One description per structure of ``table`` (segment ``k`` is its ``k``-th structure, from 1).

    Label: the structure's name; category "Anatomical Structure" and anatomic region "Lumbar spine" (DICOM code
    tables); property type: the table's SNOMED CT code; colour: the table's colour; the algorithm: SpineSegDiff,
    with ``parameters`` (such as the model) as its AlgorithmParameters (``key=value,...``).
    """
    import highdicom
    from pydicom.sr.codedict import codes

    algorithm = highdicom.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.DCM.ArtificialIntelligence, version=__version__,
        parameters=dict(parameters) if parameters else None)
    return [
        highdicom.seg.SegmentDescription(
            segment_number=number,
            segment_label=structure.name,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=highdicom.sr.CodedConcept(structure.snomed_code, "SCT", structure.snomed_meaning),
            algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[codes.SCT.LumbarSpine],
            display_color=highdicom.color.CIELabColor.from_rgb(*(255 * c for c in structure.rgb)),
        )
        for number, structure in enumerate(table.structures, start=1)
    ]


def _series_number(source: Dataset) -> int:
    number = source.get("SeriesNumber")
    return SERIES_NUMBER_OFFSET + (int(number) if number not in (None, "") else 0)


def dicom_segmentation(labels_zyx: np.ndarray, series: SourceSeries, *, table: LabelTable | None = None,
                       parameters: Mapping[str, str] | None = None) -> highdicom.seg.Segmentation:
    """The DICOM Segmentation of ``labels_zyx`` (``(z, y, x)``, values from ``table``) over ``series``.

    Args:
        labels_zyx: the label map on the series' own grid (:func:`~spinesegdiff.data.io.read_image`'s order).
        series: :func:`read_source_series` of the folder it was read from.
        table: the label table (default: the shipped one).
        parameters: kept as the algorithm's parameters (such as the model used).

    Raises:
        InputError: the grids differ, or the series cannot be referenced (highdicom's reason, one line).
        ValueError: labels not 3D or outside the table.
    """
    import highdicom

    table = table or label_table()
    numbers = segment_numbers(labels_zyx, series, table)
    descriptions = segment_descriptions(table, parameters)
    try:
        return highdicom.seg.Segmentation(
            source_images=list(series.datasets), pixel_array=numbers,
            segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=highdicom.UID(), series_number=_series_number(series.datasets[0]),
            sop_instance_uid=highdicom.UID(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=ALGORITHM_NAME, software_versions=__version__,
            device_serial_number=DEVICE_SERIAL_NUMBER, series_description=SERIES_DESCRIPTION,
            content_label=CONTENT_LABEL, content_description=f"{ALGORITHM_NAME} segmentation of the lumbar spine",
            content_creator_name=CONTENT_CREATOR,
            omit_empty_frames=bool(numbers.any()),  # an empty map keeps its frames: a SEG needs one
        )
    except (ValueError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(series.folder, f"DICOM series cannot be referenced by a DICOM Segmentation ({reason})") \
            from err


def write_dicom_segmentation(path: str | Path, labels_zyx: np.ndarray, series_folder: str | Path, *,
                             table: LabelTable | None = None, parameters: Mapping[str, str] | None = None,
                             wanted_series: str | None = None) -> Path:
    """Write ``labels_zyx`` as a DICOM Segmentation of the series in ``series_folder``, atomically.

    Args:
        path: the file to write (``<stem>_seg.dcm``).
        labels_zyx: ``(z, y, x)`` label map on the series' grid, values from ``table``.
        series_folder: the DICOM series folder the labels were made from.
        table: the label table (default: the shipped one).
        parameters: recorded as the algorithm's parameters (``AlgorithmParameters``: ``key=value,...``).
        wanted_series: the series the labels were made from, in a folder of several (its UID, as the report
            gives it).

    Raises:
        InputError: not a DICOM series folder, an unreadable or incomplete source file, grids that differ.
        ValueError: labels not 3D or outside the table.
    """
    series = read_source_series(series_folder, wanted_series)
    segmentation = dicom_segmentation(labels_zyx, series, table=table, parameters=parameters)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda temporary: segmentation.save_as(temporary, enforce_file_format=True))
