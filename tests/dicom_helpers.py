"""A realistic MR DICOM series written with pydicom, for the tests of DICOM input and DICOM SEG output.

:func:`write_mr_series` writes one single-frame MR Image Storage file per slice of a ``(z, y, x)`` volume (the
axis order of :func:`spinesegdiff.data.io.read_image`) with a :class:`~spinesegdiff.data.io.Geometry`, with
what a scanner puts in a series: patient, study, series and frame-of-reference identity, per-slice
ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness, Rows/Columns and a few MR
acquisition fields. File names do not follow the slice order by default (``IM0003`` may be the first slice), as
on many scanners, so a reader that takes the files in name order is caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from spinesegdiff.data.io import Geometry


@dataclass(frozen=True)
class DicomSeries:
    """What :func:`write_mr_series` wrote.

    Attributes:
        folder: the series folder.
        files: the files in slice order (file ``k`` holds ``array[k]``).
        sop_instance_uids: each file's SOPInstanceUID, in slice order.
        patient_id, study_uid, series_uid, frame_of_reference_uid: the identity all files share.
    """

    folder: Path
    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    patient_id: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str


def _decimal(value: float) -> str:
    """A DS value (at most 16 characters) of ``value``."""
    return f"{value:.6f}".rstrip("0").rstrip(".") if abs(value) < 1e9 else f"{value:.8e}"


def _identity(patient_id: str, study_uid: str, series_uid: str, frame_uid: str) -> Dataset:
    """Patient, study, series, frame of reference and equipment: the same in every file of the series."""
    ds = Dataset()
    ds.PatientName = "Phantom^Lumbar"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate, ds.StudyTime = "20240102", "101500"
    ds.StudyID, ds.AccessionNumber = "1", "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MR lumbar spine"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 3
    ds.SeriesDescription = "t2_tse_sag"
    ds.SeriesDate, ds.SeriesTime = "20240102", "102000"
    ds.Modality = "MR"
    ds.BodyPartExamined = "LSPINE"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "Phantom Imaging"
    ds.ManufacturerModelName = "TestScanner"
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "SK", ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "3500", "96", 17
    ds.MagneticFieldStrength = "1.5"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    return ds


def _slice(identity: Dataset, plane: np.ndarray, geometry: Geometry, k: int, uid: str) -> Dataset:
    """The dataset of slice ``k``: ``plane`` is its ``(rows, columns)`` pixels."""
    ds = Dataset()
    ds.update(identity)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
    ds.InstanceNumber = k + 1
    axes = geometry.direction_matrix  # column j: world direction of ITK axis j (x = columns, y = rows)
    position = np.asarray(geometry.origin) + axes[:, 2] * geometry.spacing[2] * k
    ds.ImagePositionPatient = [_decimal(v) for v in position]
    ds.ImageOrientationPatient = [_decimal(v) for v in (*axes[:, 0], *axes[:, 1])]
    ds.SliceLocation = _decimal(float(np.dot(np.cross(axes[:, 0], axes[:, 1]), position)))
    ds.PixelSpacing = [_decimal(geometry.spacing[1]), _decimal(geometry.spacing[0])]  # row, column spacing
    ds.SliceThickness = _decimal(geometry.spacing[2])
    ds.SpacingBetweenSlices = _decimal(geometry.spacing[2])
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.ascontiguousarray(plane.astype("<i2")).tobytes()
    return ds


def write_mr_series(folder: Path, array_zyx: np.ndarray, geometry: Geometry, *, patient_id: str = "SPINE-0001",
                    shuffle_names: bool = True, seed: int = 0, prefix: str = "IM",
                    attributes: dict[str, Any] | None = None, study_uid: str | None = None) -> DicomSeries:
    """Write ``array_zyx`` (int16 range) as an MR series in ``folder`` (created), one file per slice ``z``.

    Slice ``k`` lies at ``origin + k * spacing_z * direction[:, 2]``; its rows run along ITK axis ``y`` and its
    columns along ``x``, so :func:`~spinesegdiff.data.io.read_image` of the folder gives ``array_zyx`` and
    ``geometry`` back (for a right-handed direction, as a scanner's). With ``shuffle_names`` the file names
    ``IM0001``... (``prefix`` and a number) are a seeded permutation of the slice order. ``attributes`` replace
    the series' defaults (a T2 TSE: ``SeriesDescription`` "t2_tse_sag", ``EchoTime`` 96, ``RepetitionTime``
    3500, ...; ``None`` removes one); several series of one study share ``study_uid``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uids = {name: generate_uid() for name in ("study", "series", "frame")}
    identity = _identity(patient_id, study_uid or uids["study"], uids["series"], uids["frame"])
    for keyword, value in (attributes or {}).items():
        if value is None:
            delattr(identity, keyword)
        else:
            setattr(identity, keyword, value)
    count = array_zyx.shape[0]
    order = np.random.default_rng(seed).permutation(count) if shuffle_names else np.arange(count)
    files, sop_uids = [], []
    for k in range(count):
        uid = generate_uid()
        ds = _slice(identity, array_zyx[k], geometry, k, uid)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = folder / f"{prefix}{order[k] + 1:04d}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
        sop_uids.append(uid)
    return DicomSeries(folder=folder, files=tuple(files), sop_instance_uids=tuple(sop_uids), patient_id=patient_id,
                       study_uid=identity.StudyInstanceUID, series_uid=uids["series"],
                       frame_of_reference_uid=uids["frame"])
