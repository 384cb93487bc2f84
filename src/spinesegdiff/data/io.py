"""Image input and output with SimpleITK, keeping the full geometry.

Arrays use SimpleITK's numpy axis order: a 3D volume is ``(z, y, x)`` (slowest index first), while
:class:`Geometry` lists spacing, origin and direction in ITK's ``(x, y, z)`` order and world coordinates in
LPS, exactly as ``SimpleITK.Image`` does. :func:`read_image` returns ``(array, geometry)`` and
:func:`write_image` takes the same pair back, so a read followed by a write reproduces the file's grid.

Supported: ``.mha``/``.mhd``, ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr`` and DICOM series folders (read only;
labels derived from DICOM are written as NIfTI, or as a DICOM SEG by :mod:`spinesegdiff.data.dicom_seg`). Which
series of a folder is read is :mod:`spinesegdiff.data.dicom_series`'s choice; an enhanced multi-frame DICOM file
is read by :mod:`spinesegdiff.data.dicom_multiframe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinesegdiff.data.dicom_multiframe import frame_count, read_multiframe_sitk
from spinesegdiff.data.dicom_series import SeriesInfo, read_dicom_series
from spinesegdiff.errors import InputError, MissingInputError
from spinesegdiff.files import atomic_write

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
"""File endings read and written as images (longest first so ``.nii.gz`` wins over ``.gz``)."""


@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid sits in the world (ITK conventions, LPS world coordinates).

    Attributes:
        spacing: voxel size in mm per ITK axis ``(x, y, z)``.
        origin: world position (mm) of the centre of voxel ``(0, 0, 0)``.
        direction: row-major ``D x D`` direction cosines; column ``j`` is the world direction of ITK axis ``j``.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        dim = len(self.spacing)
        if len(self.origin) != dim or len(self.direction) != dim * dim:
            raise ValueError(
                f"geometry of dimension {dim} needs {dim} origin values and {dim * dim} direction values, "
                f"got {len(self.origin)} and {len(self.direction)}"
            )
        if any(s <= 0 or not np.isfinite(s) for s in self.spacing):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")

    @property
    def dimension(self) -> int:
        return len(self.spacing)

    @property
    def direction_matrix(self) -> np.ndarray:
        """Direction cosines as a ``(D, D)`` array whose column ``j`` is ITK axis ``j`` in world space."""
        return np.asarray(self.direction, dtype=np.float64).reshape(self.dimension, self.dimension)

    @classmethod
    def from_sitk(cls, image) -> Geometry:
        return cls(
            spacing=tuple(float(v) for v in image.GetSpacing()),
            origin=tuple(float(v) for v in image.GetOrigin()),
            direction=tuple(float(v) for v in image.GetDirection()),
        )

    def apply_to(self, image) -> None:
        """Copy this geometry onto a ``SimpleITK.Image`` of the same dimension."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)

    def to_dict(self) -> dict[str, list[float]]:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[float]]) -> Geometry:
        return cls(
            spacing=tuple(float(v) for v in data["spacing"]),
            origin=tuple(float(v) for v in data["origin"]),
            direction=tuple(float(v) for v in data["direction"]),
        )

    def allclose(self, other: Geometry, *, atol: float = 1e-4) -> bool:
        """True when both grids coincide up to ``atol`` (mm for spacing and origin, cosine for direction)."""
        return (
            self.dimension == other.dimension
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )


IMAGE_IOS = {".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO",
             ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO"}
"""The ITK reader of each image ending: named explicitly, ITK would not recognise ``SCAN.MHA``."""


def image_suffix(path: str | Path) -> str:
    """The image file ending of ``path`` (``.nii.gz``, ``.mha``, ...), or ``""`` for anything else."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


DICOM_FILE_SUFFIXES: tuple[str, ...] = (".dcm", ".ima")
"""Endings of single DICOM files (matched in any case), dropped from their output stems."""


def image_stem(path: str | Path) -> str:
    """The file name without its image ending: ``scan.nii.gz`` -> ``scan``, ``IM0001.dcm`` -> ``IM0001``; a folder
    keeps its name."""
    path = Path(path)
    suffix = image_suffix(path)
    if not suffix and path.suffix.lower() in DICOM_FILE_SUFFIXES and not path.is_dir():
        suffix = path.suffix
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


_MHA_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                   "MET_DOUBLE": 8}


def _truncated(path: Path, held: int, needed: int) -> InputError:
    return InputError(path, f"file is truncated (holds {held} of the {needed} bytes of image data its header "
                            "announces)")


def _check_metaimage_size(path: Path) -> None:
    """A ``.mha`` with its data inside must hold the bytes its header announces (SimpleITK pads with zeros)."""
    with path.open("rb") as stream:
        head = stream.read(65536)
    fields: dict[str, str] = {}
    offset = 0
    for line in head.split(b"\n"):
        offset += len(line) + 1
        key, _, value = line.decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        return  # no complete header here: SimpleITK reports what is wrong
    if fields.get("ElementDataFile") != "LOCAL" or fields.get("ElementType") not in _MHA_TYPE_BYTES:
        return
    held = path.stat().st_size - offset
    try:
        shape = [int(v) for v in fields["DimSize"].split()]
        needed = int(np.prod(shape)) * int(fields.get("ElementNumberOfChannels", "1")) * _MHA_TYPE_BYTES[
            fields["ElementType"]]
        compressed = int(fields.get("CompressedDataSize", "0"))
    except (KeyError, ValueError):
        return
    if fields.get("CompressedData", "False").lower() == "true":
        if held < compressed:
            raise _truncated(path, held, compressed)
        held = _inflated_size(path, offset)
    if held < needed:
        raise _truncated(path, held, needed)


def _inflated_size(path: Path, offset: int) -> int:
    """Bytes of the zlib stream that starts at ``offset`` of ``path`` (as many as inflate before it breaks)."""
    import zlib

    inflate, total = zlib.decompressobj(), 0
    with path.open("rb") as stream:
        stream.seek(offset)
        try:
            while chunk := stream.read(1 << 20):
                total += len(inflate.decompress(chunk))
        except zlib.error:
            pass
    return total


def _nifti_data_bytes(header: bytes) -> tuple[int, int] | None:
    """``(vox_offset, data bytes)`` from a NIfTI-1 header, ``None`` when it is not one."""
    for order in "<>":
        if len(header) >= 348 and int(np.frombuffer(header[:4], f"{order}i4")[0]) == 348:
            dims = np.frombuffer(header[40:56], f"{order}i2")
            bitpix = int(np.frombuffer(header[72:74], f"{order}i2")[0])
            offset = int(np.frombuffer(header[108:112], f"{order}f4")[0])
            count = int(np.prod([max(int(d), 1) for d in dims[1 : 1 + max(min(int(dims[0]), 7), 0)]]))
            return offset, count * bitpix // 8
    return None


def _check_nifti_size(path: Path) -> None:
    """A ``.nii`` must hold its voxels; a ``.nii.gz`` must also hold a complete gzip stream."""
    import zlib

    if not path.name.lower().endswith(".gz"):
        with path.open("rb") as stream:
            layout = _nifti_data_bytes(stream.read(348))
        if layout is not None and path.stat().st_size < sum(layout):
            raise _truncated(path, path.stat().st_size - layout[0], layout[1])
        return
    inflate, head, total = zlib.decompressobj(wbits=31), b"", 0
    with path.open("rb") as stream:
        try:
            while chunk := stream.read(1 << 20):
                data = inflate.decompress(chunk)
                head, total = (head + data[:348])[:348], total + len(data)
        except zlib.error:
            return  # not gzip at all: SimpleITK reports it as unreadable
    layout = _nifti_data_bytes(head)
    if not inflate.eof:
        needed = f" of the {layout[1]} bytes of image data" if layout else ""
        raise InputError(path, f"file is truncated (its compressed data ends early, after "
                               f"{max(total - (layout[0] if layout else 0), 0)}{needed})")
    if layout is not None and total < sum(layout):
        raise _truncated(path, total - layout[0], layout[1])


def check_file_complete(path: str | Path) -> None:
    """Refuse an image file cut short (SimpleITK reads one silently, filling the missing voxels with zeros).

    Checked: ``.mha`` with its data inside (raw, or compressed with ``CompressedDataSize``), ``.nii`` and
    ``.nii.gz`` (the gzip stream must end and hold every voxel). Other formats are left to SimpleITK.

    Raises:
        InputError: ``file is truncated (holds N of the M bytes ...)``.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix == ".mha":
        _check_metaimage_size(path)
    elif suffix in (".nii", ".nii.gz"):
        _check_nifti_size(path)


def read_sitk_image(path: str | Path, *, series: str | SeriesInfo | None = None):
    """Read a file or DICOM series folder into a ``SimpleITK.Image``.

    ``series``: for a DICOM folder holding several series, the one to read (its UID, number or words of its
    description, or a series chosen already; default: the preferred one,
    :func:`~spinesegdiff.data.dicom_series.choose_series`).

    Raises:
        MissingInputError: ``path`` does not exist.
        InputError: the path is not a readable image (the message names it).
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise MissingInputError(path)
    try:
        if path.is_dir():
            return read_dicom_series(path, series)
        if not image_suffix(path) and path.suffix.lower() not in (*DICOM_FILE_SUFFIXES, ""):
            raise InputError(
                path, f"unsupported file type {path.suffix!r} (expected one of {IMAGE_SUFFIXES})"
            )
        check_file_complete(path)
        if not image_suffix(path) and frame_count(path):  # an enhanced DICOM image: frames placed by position
            return read_multiframe_sitk(path)
        return sitk.ReadImage(str(path), imageIO=IMAGE_IOS.get(image_suffix(path), ""))
    except RuntimeError as err:  # SimpleITK reports unreadable files as RuntimeError
        raise InputError(path, "not a readable image file") from err


def read_image(path: str | Path, *, expected_dimension: int | None = 3,
               series: str | SeriesInfo | None = None) -> tuple[np.ndarray, Geometry]:
    """Read an image as ``(array, geometry)``.

    Args:
        path: an image file (see ``IMAGE_SUFFIXES``) or a DICOM series folder.
        expected_dimension: refuse images of another dimension (``None`` accepts any).
        series: the series to read from a DICOM folder of several (see :func:`read_sitk_image`).

    Returns:
        ``array`` in SimpleITK order (``(z, y, x)`` for 3D) with the file's own dtype, and its geometry.

    Raises:
        MissingInputError, InputError: missing path, unreadable file, multi-component pixels, wrong dimension.
    """
    import SimpleITK as sitk

    image = read_sitk_image(path, series=series)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path, f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel, expected 1"
        )
    dimension = image.GetDimension()
    if expected_dimension is not None and dimension != expected_dimension:
        raise InputError(path, f"image is {dimension}D, a {expected_dimension}D volume is expected")
    return sitk.GetArrayFromImage(image), Geometry.from_sitk(image)


def _to_sitk(array: np.ndarray, geometry: Geometry):
    import SimpleITK as sitk

    if array.ndim != geometry.dimension:
        raise ValueError(f"array is {array.ndim}D but the geometry is {geometry.dimension}D")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.int64:
        array = array.astype(np.int32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    geometry.apply_to(image)
    return image


def write_image(path: str | Path, array: np.ndarray, geometry: Geometry, *, compress: bool = True) -> Path:
    """Write ``array`` (SimpleITK axis order) with ``geometry`` to ``path`` atomically.

    The file is written to a temporary name in the same folder and renamed into place, so a failure never
    leaves a half-written file. The format follows the ending of ``path``.
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = image_suffix(path)
    if not suffix:
        raise ValueError(
            f"{path}: cannot tell the image format from the file name (use one of {IMAGE_SUFFIXES})"
        )
    image = _to_sitk(array, geometry)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: sitk.WriteImage(image, str(temporary), useCompression=compress,
                                                          imageIO=IMAGE_IOS[suffix]))
    return path


def check_same_grid(
    image_path: str | Path,
    image: tuple[np.ndarray, Geometry],
    mask_path: str | Path,
    mask: tuple[np.ndarray, Geometry],
) -> None:
    """Raise :class:`InputError` naming the mask when image and mask do not share shape and geometry."""
    (image_array, image_geometry), (mask_array, mask_geometry) = image, mask
    if image_array.shape != mask_array.shape:
        raise InputError(
            mask_path,
            f"mask shape {mask_array.shape} differs from image {Path(image_path).name} {image_array.shape}",
        )
    if not image_geometry.allclose(mask_geometry, atol=1e-3):
        raise InputError(mask_path, f"mask geometry differs from image {Path(image_path).name}")
