"""Sagittal sub-series of a real scan, for the benchmarks that imitate what users hand over.

A user's series is often a single sagittal slice or a 2D spin-echo series with 3-4 mm between slices, while the
external evaluation scans hold 21 slices at 1 mm. These cut such series out of a scan, keeping its geometry
(spacing, origin and direction follow the slices kept), so that ``predict`` sees them as it would the user's.
"""

from __future__ import annotations

import numpy as np

from spinesegdiff.data.io import Geometry
from spinesegdiff.data.preprocess import Reorientation


def sagittal_axis(image) -> int:
    """The SimpleITK index axis of ``image`` (a 3D ``SimpleITK.Image``) that runs left-right, as ``predict``'s
    reorientation to RAS+ reads it from the direction matrix."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return Reorientation.from_direction(direction).native_axis[0]


def every_nth_slice(image, step: int, phase: int = 0):
    """The sagittal slices ``phase, phase + step, ...`` of ``image`` as a ``SimpleITK.Image`` whose slice
    spacing is ``step`` times the original (a series acquired ``step`` slices apart)."""
    cut = [slice(None)] * 3
    cut[sagittal_axis(image)] = slice(phase, None, step)
    return image[tuple(cut)]


def one_slice(image, index: int) -> tuple[np.ndarray, Geometry]:
    """Sagittal slice ``index`` of ``image`` as a one-slice 3D scan ``(array_zyx, geometry)``."""
    import SimpleITK as sitk

    cut = [slice(None)] * 3
    cut[sagittal_axis(image)] = slice(index, index + 1)
    kept = image[tuple(cut)]
    return sitk.GetArrayFromImage(kept), Geometry.from_sitk(kept)
