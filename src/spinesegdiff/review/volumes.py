"""A case's volumes for the review page: its label map, uncertainty map and (where found) scan, on one grid.

The label map and the uncertainty map are read with :func:`~spinesegdiff.data.io.read_image` (a 3D Slicer
``.seg.nrrd`` is a plain NRRD label image to it); a DICOM Segmentation (``<stem>_seg.dcm``, beside a NIfTI
uncertainty map) is put onto the uncertainty map's grid frame by frame, from each frame's position in the world
(:func:`read_dicom_seg_labels`). The scan is used only if it has the label map's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinesegdiff.data.io import Geometry, read_image
from spinesegdiff.data.label_table import label_table
from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.review.cases import CaseRecord

POSITION_TOLERANCE = 0.05
"""How far (in voxels) a DICOM SEG frame may lie from a slice of the uncertainty grid and still be placed on it."""


@dataclass(frozen=True)
class CaseVolumes:
    """A case's maps on the scan's grid, ``(z, y, x)`` in SimpleITK order.

    Attributes:
        labels: classes 0 background, 1 SC, 2 VB, 3 IVD, as stored (other values are drawn as background).
        uncertainty: values in [0, 1] as stored (the layers clip them; non-finite values count as 0).
        geometry: the grid's geometry.
        image: the scan's intensities, or ``None`` when not found or not on this grid.
        flags: what went wrong reading the scan (``image not on the segmentation's grid`` ...).
    """

    labels: np.ndarray
    uncertainty: np.ndarray
    geometry: Geometry
    image: np.ndarray | None
    flags: tuple[str, ...] = ()


def _segment_values(dataset) -> dict[int, int]:
    """Segment number -> label value, by the segment's SNOMED CT property code (else its label, else its number)."""
    table = label_table()
    by_code = {s.snomed_code: s.value for s in table.structures}
    by_name = {s.name.lower(): s.value for s in table.structures}
    values: dict[int, int] = {}
    for segment in dataset.get("SegmentSequence", []):
        number = int(segment.SegmentNumber)
        codes = segment.get("SegmentedPropertyTypeCodeSequence", [])
        code = str(codes[0].CodeValue) if codes else ""
        values[number] = by_code.get(code, by_name.get(str(segment.get("SegmentLabel", "")).lower(), number))
    return values


def read_dicom_seg_labels(path: Path, shape_zyx: tuple[int, ...], geometry: Geometry) -> np.ndarray:
    """A DICOM Segmentation's segments as one ``(z, y, x)`` uint8 label map on the grid ``shape_zyx``/``geometry``.

    Each frame is placed by its ``ImagePositionPatient`` (world position of its first pixel): the frames must be
    slices of that grid (``Rows`` x ``Columns`` equal to ``(y, x)``), as for a SEG made from the series the grid
    was read from.

    Raises:
        InputError: not a DICOM Segmentation, or frames that do not lie on the grid (the message names the file).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path)
        if dataset.get("Modality") != "SEG":
            raise InputError(path, "is not a DICOM Segmentation (Modality SEG)")
        frames = np.asarray(dataset.pixel_array)
    except (InvalidDicomError, OSError, ValueError, AttributeError) as err:
        raise InputError(path, f"cannot read the DICOM Segmentation ({err})") from err
    frames = frames[None] if frames.ndim == 2 else frames
    if frames.shape[1:] != tuple(shape_zyx[1:]):
        raise InputError(path, f"frames of {frames.shape[1]} x {frames.shape[2]} pixels do not match the "
                               f"uncertainty map's {shape_zyx[1]} x {shape_zyx[2]}")
    values = _segment_values(dataset)
    threshold = 0
    if dataset.get("SegmentationType") == "FRACTIONAL":  # probabilities or occupancies: more than half
        threshold = int(dataset.get("MaximumFractionalValue", 255)) // 2
    to_index = np.linalg.inv(geometry.direction_matrix * np.asarray(geometry.spacing)[None, :])
    labels = np.zeros(shape_zyx, dtype=np.uint8)
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence", [])
    if len(per_frame) != len(frames):
        raise InputError(path, f"{len(frames)} frames but {len(per_frame)} per-frame descriptions")
    for frame, groups in zip(frames, per_frame, strict=True):
        number = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.asarray(groups.PlanePositionSequence[0].ImagePositionPatient, dtype=np.float64)
        index = to_index @ (position - np.asarray(geometry.origin))
        slice_z = int(np.rint(index[2]))
        if np.abs(index - np.round(index)).max() > POSITION_TOLERANCE or np.abs(np.round(index[:2])).max() > 0 \
                or not 0 <= slice_z < shape_zyx[0]:
            raise InputError(path, f"a frame at {np.round(position, 2).tolist()} mm is not a slice of the "
                                   "uncertainty map's grid")
        labels[slice_z][frame > threshold] = values.get(number, number)
    return labels


def _read_labels(path: Path, uncertainty: np.ndarray, geometry: Geometry) -> np.ndarray:
    if path.name.lower().endswith(".dcm"):
        return read_dicom_seg_labels(path, uncertainty.shape, geometry)
    labels, label_geometry = read_image(path)
    if labels.shape != uncertainty.shape:
        raise InputError(path, f"segmentation grid {labels.shape} differs from the uncertainty map's "
                               f"{uncertainty.shape}")
    if not np.allclose(label_geometry.spacing, geometry.spacing, rtol=1e-4):
        raise InputError(path, "segmentation and uncertainty map have different voxel spacings")
    return labels


def read_case_volumes(case: CaseRecord) -> CaseVolumes:
    """Read a case's label map, uncertainty map and scan (as stored: the layers clean up the slices they draw).

    A scan that cannot be read, or has another grid, is left out with a flag.

    Raises:
        InputError, MissingInputError: the label or uncertainty map is missing, unreadable, or on another grid.
    """
    if case.segmentation is None or case.uncertainty is None:
        raise InputError(case.report, "the segmentation or uncertainty map is missing")
    uncertainty, geometry = read_image(case.uncertainty)
    labels = _read_labels(case.segmentation, uncertainty, geometry)
    image, flags = None, []
    if case.image is not None:
        try:
            scan, _ = read_image(case.image, series=case.series)
        except SpineSegDiffError as err:
            flags.append(f"image unreadable ({err.problem})")
        else:
            if scan.shape == labels.shape:
                image = scan
            else:
                flags.append(f"image grid {scan.shape} is not the segmentation's {labels.shape}")
    return CaseVolumes(labels=labels, uncertainty=uncertainty, geometry=geometry, image=image, flags=tuple(flags))
