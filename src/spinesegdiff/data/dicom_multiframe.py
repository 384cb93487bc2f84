"""Enhanced (multi-frame) DICOM images: one file holding every slice of a series, read with its geometry.

Newer scanners (Siemens XA, Philips, GE with enhanced export) and many archives store an MR series as one
Enhanced MR Image (or Legacy Converted Enhanced MR Image) file: the slices are its frames, and each frame's
position, orientation, pixel spacing and rescale sit in functional groups (``PerFrameFunctionalGroupsSequence``
and ``SharedFunctionalGroupsSequence``) instead of the top-level attributes a classic file has. GDCM, behind
SimpleITK, takes the frames in file order and one spacing for all: frames stored out of position order come back
scrambled, with a spacing of 1 mm. Here the frames are placed by their own positions:

- every frame must share one orientation (else the file holds several stacks);
- frames are sorted along the slice normal (``ImageOrientationPatient``'s row x column direction), and must be
  evenly spaced with one frame per position (several frames at one position are echoes, phases or Dixon
  images: not one volume);
- each frame's ``RescaleSlope`` / ``RescaleIntercept`` is applied (float32 then; the stored integers otherwise).

Arrays come back in SimpleITK's order ``(z, y, x)`` with a :class:`~spinesegdiff.data.io.Geometry` whose third
axis runs along the normal, as :func:`~spinesegdiff.data.io.read_image` gives them for a classic series.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from spinesegdiff.errors import InputError

ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between two frames' direction cosines that is still one orientation."""


def frame_count(path: str | Path) -> int:
    """``NumberOfFrames`` of a DICOM file with functional groups (an enhanced image); 0 for anything else (a
    classic single-frame file, a file that is not DICOM)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["NumberOfFrames", "SharedFunctionalGroupsSequence"])
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return 0
    if "SharedFunctionalGroupsSequence" not in header:
        return 0
    try:
        return max(int(header.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 0


def functional_group(dataset: Any, frame: int, sequence: str) -> Any:
    """Item 0 of functional group ``sequence`` for ``frame`` (0-based): the per-frame one, else the shared one;
    ``None`` where neither holds it."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = dataset.get(groups)
        if items is not None and len(items) > index and sequence in items[index]:
            entries = items[index][sequence].value
            if entries:
                return entries[0]
    return None


def _frame_geometry(dataset: Any, frame: int, path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Orientation (6 cosines), position (mm) and pixel spacing (row, column) of one frame."""
    orientation = functional_group(dataset, frame, "PlaneOrientationSequence")
    position = functional_group(dataset, frame, "PlanePositionSequence")
    measures = functional_group(dataset, frame, "PixelMeasuresSequence")
    missing = [name for name, item, attribute in (("orientation", orientation, "ImageOrientationPatient"),
                                                 ("position", position, "ImagePositionPatient"),
                                                 ("pixel spacing", measures, "PixelSpacing"))
               if item is None or item.get(attribute) in (None, "")]
    if missing:
        raise InputError(path, f"frame {frame + 1} of the multi-frame image has no {' or '.join(missing)}")
    spacing = [float(v) for v in measures.PixelSpacing]
    return (np.asarray([float(v) for v in orientation.ImageOrientationPatient]),
            np.asarray([float(v) for v in position.ImagePositionPatient]), (spacing[0], spacing[1]))


def _rescale(dataset: Any, frame: int) -> tuple[float, float]:
    item = functional_group(dataset, frame, "PixelValueTransformationSequence")
    if item is None:
        return float(dataset.get("RescaleSlope", 1) or 1), float(dataset.get("RescaleIntercept", 0) or 0)
    return float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)


def _slice_thickness(dataset: Any) -> float:
    """The slice spacing of a one-frame image: SpacingBetweenSlices, else SliceThickness, else 1 mm."""
    measures = functional_group(dataset, 0, "PixelMeasuresSequence")
    for value in (dataset.get("SpacingBetweenSlices"), None if measures is None else measures.get("SliceThickness")):
        try:
            if value not in (None, "") and float(value) > 0:
                return float(value)
        except (TypeError, ValueError):
            continue
    return 1.0


def _pixels(dataset: Any, path: Path) -> tuple[np.ndarray, bool]:
    """The frames ``(frames, rows, columns)`` in file order, and whether they are rescaled already: pydicom's
    stored values, else GDCM's decoding (compressed syntaxes pydicom has no decoder for), which applies the
    rescale itself."""
    try:
        pixels, rescaled = dataset.pixel_array, False
    except (RuntimeError, NotImplementedError, ValueError):  # no pydicom decoder for it: GDCM may have one
        import SimpleITK as sitk

        try:
            pixels, rescaled = sitk.GetArrayFromImage(sitk.ReadImage(str(path))), True
        except RuntimeError as err:
            raise InputError(path, "the multi-frame image's pixel data cannot be decoded "
                                   f"(transfer syntax {dataset.file_meta.get('TransferSyntaxUID', '?')})") from err
    pixels = np.asarray(pixels)
    return (pixels.reshape(1, *pixels.shape) if pixels.ndim == 2 else pixels), rescaled


def read_multiframe(path: str | Path):
    """An enhanced multi-frame DICOM image as ``(array_zyx, geometry)``, frames placed by their positions.

    Raises:
        InputError: an unreadable file, a frame without position, orientation or spacing, colour pixels, frames
            in several orientations, several frames at one position, or unevenly spaced frames (the message
            names the file and says which).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from spinesegdiff.data.io import Geometry

    path = Path(path)
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise InputError(path, f"not a readable DICOM file ({type(err).__name__})") from err
    if int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError(path, f"image has {dataset.SamplesPerPixel} components per voxel, expected 1")
    pixels, rescaled = _pixels(dataset, path)
    count = pixels.shape[0]
    frames = [_frame_geometry(dataset, k, path) for k in range(count)]
    orientation = frames[0][0]
    if any(np.abs(f[0] - orientation).max() > ORIENTATION_TOLERANCE for f in frames):
        raise InputError(path, "the multi-frame image's frames lie in several orientations (several stacks in one "
                               "file): not one volume")
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)
    heights = np.asarray([float(np.dot(normal, f[1])) for f in frames])
    order = np.argsort(heights, kind="stable")
    gaps = np.diff(heights[order])
    row_spacing, column_spacing = frames[0][2]
    step = float(np.median(gaps)) if count > 1 else _slice_thickness(dataset)
    if count > 1 and (gaps < 0.01 * max(step, 1e-3)).any():
        positions = len(np.unique(np.round(heights, 2)))
        raise InputError(path, f"the multi-frame image has {count} frames at {positions} slice positions (echoes, "
                               "phases or Dixon images?): not one volume")
    uneven = np.flatnonzero(np.abs(gaps - step) > 0.1 * max(step, 1e-3))
    if uneven.size:
        k = int(uneven[0])
        raise InputError(path, f"the multi-frame image's frames are not evenly spaced: {gaps[k]:.2f} mm between "
                               f"frames {order[k] + 1} and {order[k + 1] + 1}, {step:.2f} mm elsewhere")
    scales = [(1.0, 0.0) if rescaled else _rescale(dataset, int(k)) for k in order]
    array = pixels[order]
    if any(scale != (1.0, 0.0) for scale in scales):
        array = np.stack([frame.astype(np.float32) * slope + intercept
                          for frame, (slope, intercept) in zip(array, scales, strict=True)])
    direction = np.stack([row_direction, column_direction, normal], axis=1)  # column j: world direction of axis j
    geometry = Geometry(spacing=(column_spacing, row_spacing, abs(step)),
                        origin=tuple(float(v) for v in frames[int(order[0])][1]),
                        direction=tuple(float(v) for v in direction.reshape(-1)))
    return np.ascontiguousarray(array), geometry


def read_multiframe_sitk(path: str | Path):
    """:func:`read_multiframe` as a ``SimpleITK.Image`` (what :func:`~spinesegdiff.data.io.read_sitk_image`
    gives for any other file)."""
    import SimpleITK as sitk

    array, geometry = read_multiframe(path)
    image = sitk.GetImageFromArray(array, isVector=False)
    geometry.apply_to(image)
    return image
