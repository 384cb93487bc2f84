"""The paper's preprocessing (section 3.1) and its exact inverse.

Forward, for a 3D scan:

1. reorient to RAS+ (axes point to patient Right, Anterior, Superior) by axis permutation and flips only;
2. intensity: divide by the volume's 98th percentile, clip to [0, 1], scale to 0..255 (stored as ``uint8``;
   the network sees ``value / 127.5 - 1`` in [-1, 1], see :func:`to_network_range`);
3. take sagittal slices (planes of constant R; the central one by default);
4. resample each slice to 1 mm (linear for images, nearest neighbour for label maps) on a 320 x 320 grid
   whose centre is the centre of the slice's field of view (so smaller slices are padded, larger cropped; for
   prediction the grid can instead grow to hold a larger field, see :func:`plan_grid`).

A 2D model slice is laid out like a radiologist's sagittal view: rows run from superior (row 0) to inferior,
columns from anterior (column 0) to posterior.

Everything needed to go back is in :class:`SagittalGrid` (JSON-serialisable), so a prediction on the
320 x 320 grid, labels or per-class probabilities, is put back on the scan's own voxel grid and geometry by
:func:`restore_labels` / :func:`restore_probabilities` / :func:`slices_to_volume`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

from spinesegdiff.data.io import Geometry
from spinesegdiff.errors import InputError

MODEL_SIZE = 320
"""Side of the square model grid in pixels (the paper's 320 x 320)."""
MODEL_SPACING_MM = 1.0
"""Pixel size of the model grid in mm."""
MAX_CANVAS = 1024
"""Largest side in pixels of a canvas grown to cover a scan's field of view (:func:`plan_grid`); a larger field
(a whole-body series) is cropped to its central 1024 mm."""
INTENSITY_PERCENTILE = 98.0
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

Plane = Literal["sagittal", "coronal", "axial", "isotropic"]


@dataclass(frozen=True)
class Reorientation:
    """Permutation and flips that turn a native ITK ``(x, y, z)`` index grid into RAS+ order.

    ``native_axis[k]`` is the native ITK axis that runs along RAS axis ``k`` (0 = R, 1 = A, 2 = S) and
    ``flipped[k]`` says whether it runs the opposite way (towards L, P or I).
    """

    native_axis: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]

    @classmethod
    def from_direction(cls, direction: np.ndarray) -> Reorientation:
        """Closest axis permutation for a ``(3, 3)`` LPS direction matrix (column ``j`` = ITK axis ``j``)."""
        ras = LPS_TO_RAS @ np.asarray(direction, dtype=np.float64).reshape(3, 3)
        best = max(
            itertools.permutations(range(3)), key=lambda perm: sum(abs(ras[k, perm[k]]) for k in range(3))
        )
        flipped = tuple(bool(ras[k, best[k]] < 0) for k in range(3))
        return cls(native_axis=tuple(int(a) for a in best), flipped=flipped)

    def to_ras(self, volume_zyx: np.ndarray) -> np.ndarray:
        """``(z, y, x)`` SimpleITK-order array (optionally with leading channels) -> ``(..., R, A, S)`` view."""
        lead = volume_zyx.ndim - 3
        xyz = np.moveaxis(volume_zyx, (lead, lead + 1, lead + 2), (lead + 2, lead + 1, lead))
        ras = np.moveaxis(xyz, [lead + a for a in self.native_axis], [lead, lead + 1, lead + 2])
        flips = tuple(lead + k for k in range(3) if self.flipped[k])
        return np.flip(ras, axis=flips) if flips else ras

    def from_ras(self, ras: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_ras`: ``(..., R, A, S)`` -> ``(..., z, y, x)`` in the native layout."""
        lead = ras.ndim - 3
        flips = tuple(lead + k for k in range(3) if self.flipped[k])
        unflipped = np.flip(ras, axis=flips) if flips else ras
        xyz = np.moveaxis(unflipped, [lead, lead + 1, lead + 2], [lead + a for a in self.native_axis])
        return np.moveaxis(xyz, (lead, lead + 1, lead + 2), (lead + 2, lead + 1, lead))


@dataclass(frozen=True)
class AxisResampling:
    """Linear map between one native in-plane axis and one model-grid axis, centres aligned.

    A model pixel ``p`` samples native continuous index ``i = scale * p + offset``.
    """

    native_size: int
    native_spacing: float
    model_size: int = MODEL_SIZE
    model_spacing: float = MODEL_SPACING_MM

    @property
    def scale(self) -> float:
        return self.model_spacing / self.native_spacing

    @property
    def offset(self) -> float:
        # native pixel centre (i + 0.5) * s_n and model pixel centre (p + 0.5) * s_m share the field-of-view
        # centre: (i + 0.5) s_n - n s_n / 2 = (p + 0.5) s_m - m s_m / 2
        return (0.5 * self.model_spacing - self.model_size * self.model_spacing / 2) / self.native_spacing + (
            self.native_size / 2 - 0.5
        )

    @property
    def field_of_view_mm(self) -> float:
        return self.native_size * self.native_spacing

    @property
    def crops(self) -> bool:
        """The model axis is shorter than the native field of view (part of the slice is not on the grid)."""
        return self.field_of_view_mm > self.model_size * self.model_spacing + 1e-6


@dataclass(frozen=True)
class SagittalGrid:
    """Everything that maps a native 3D scan to sagittal model slices (``rows.model_size`` x
    ``cols.model_size``, 320 x 320 unless grown to cover the field of view) and back.

    Attributes:
        native_shape: shape of the native array in SimpleITK order ``(z, y, x)``.
        geometry: the native geometry.
        reorientation: native -> RAS+ axis permutation and flips.
        rows: resampling of the superior-inferior axis (model rows).
        cols: resampling of the anterior-posterior axis (model columns).
        plane: acquisition plane read from the voxel spacing (the coarsest axis is the slice normal).
        oblique_deg: angle in degrees between the R axis of the reoriented grid and the world left-right axis.
    """

    native_shape: tuple[int, int, int]
    geometry: Geometry
    reorientation: Reorientation
    rows: AxisResampling
    cols: AxisResampling
    plane: Plane
    oblique_deg: float

    @property
    def num_sagittal(self) -> int:
        """Number of sagittal (constant-R) slices in the scan."""
        return self.native_shape[2 - self.reorientation.native_axis[0]]

    @property
    def central_index(self) -> int:
        """Index of the central sagittal slice along R (``n // 2``)."""
        return self.num_sagittal // 2

    @property
    def ras_spacing(self) -> tuple[float, float, float]:
        return tuple(self.geometry.spacing[a] for a in self.reorientation.native_axis)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["geometry"] = self.geometry.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SagittalGrid:
        return cls(
            native_shape=tuple(data["native_shape"]),
            geometry=Geometry.from_dict(data["geometry"]),
            reorientation=Reorientation(
                tuple(data["reorientation"]["native_axis"]), tuple(data["reorientation"]["flipped"])
            ),
            rows=AxisResampling(**data["rows"]),
            cols=AxisResampling(**data["cols"]),
            plane=data["plane"],
            oblique_deg=float(data["oblique_deg"]),
        )


def acquisition_plane(geometry: Geometry, reorientation: Reorientation, anisotropy: float = 1.25) -> Plane:
    """The plane a scan was acquired in: the RAS axis of its coarsest voxel side is the slice normal.

    Scans whose coarsest and finest spacing differ by less than ``anisotropy`` are ``isotropic`` (any plane).
    """
    spacing = np.asarray([geometry.spacing[a] for a in reorientation.native_axis])
    if spacing.max() < anisotropy * spacing.min():
        return "isotropic"
    return ("sagittal", "coronal", "axial")[int(np.argmax(spacing))]


def canvas_size(native_size: int, native_spacing: float, *, model_size: int = MODEL_SIZE,
                model_spacing: float = MODEL_SPACING_MM) -> int:
    """Model-grid pixels that cover ``native_size`` pixels of ``native_spacing`` mm: at least ``model_size``, at
    most :data:`MAX_CANVAS`."""
    needed = int(np.ceil(native_size * native_spacing / model_spacing - 1e-6))
    return int(np.clip(needed, model_size, max(model_size, MAX_CANVAS)))


def plan_grid(
    shape_zyx: Sequence[int],
    geometry: Geometry,
    *,
    model_size: int = MODEL_SIZE,
    model_spacing: float = MODEL_SPACING_MM,
    cover_field_of_view: bool = False,
) -> SagittalGrid:
    """Work out the native <-> model mapping for a 3D scan of ``shape_zyx`` (SimpleITK order).

    The model grid is ``model_size`` square, centred on the slice's field of view (the paper's fixed 320 x 320,
    used for training); with ``cover_field_of_view`` an axis whose field is longer grows to hold all of it
    (:func:`canvas_size`), and :mod:`spinesegdiff.pipelines.tiling` segments the larger canvas window by window.
    """
    if len(shape_zyx) != 3 or geometry.dimension != 3:
        raise ValueError(f"a 3D scan is needed, got shape {tuple(shape_zyx)}")
    reorientation = Reorientation.from_direction(geometry.direction_matrix)
    ras_direction = LPS_TO_RAS @ geometry.direction_matrix
    r_axis = reorientation.native_axis[0]
    oblique = float(np.degrees(np.arccos(np.clip(abs(ras_direction[0, r_axis]), 0.0, 1.0))))
    shape_xyz = tuple(int(n) for n in reversed(tuple(shape_zyx)))
    a_axis, s_axis = reorientation.native_axis[1], reorientation.native_axis[2]

    def size(axis: int) -> int:
        if not cover_field_of_view:
            return model_size
        return canvas_size(shape_xyz[axis], geometry.spacing[axis], model_size=model_size, model_spacing=model_spacing)

    return SagittalGrid(
        native_shape=tuple(int(n) for n in shape_zyx),
        geometry=geometry,
        reorientation=reorientation,
        rows=AxisResampling(shape_xyz[s_axis], geometry.spacing[s_axis], size(s_axis), model_spacing),
        cols=AxisResampling(shape_xyz[a_axis], geometry.spacing[a_axis], size(a_axis), model_spacing),
        plane=acquisition_plane(geometry, reorientation),
        oblique_deg=oblique,
    )


def normalise_intensity(volume: np.ndarray, *, source: str | Path | None = None) -> np.ndarray:
    """Scale a scan to 0..255 by its 98th percentile (paper, section 3.1).

    Args:
        volume: any-shape real array of MR intensities.

    Returns:
        ``float32`` array, ``clip(volume / p98, 0, 1) * 255``.

    Raises:
        InputError: NaN or infinite voxels, or a constant image (nothing to normalise).
    """
    original = np.asarray(volume)
    with np.errstate(over="ignore"):
        volume = np.asarray(original, dtype=np.float32)
    if not np.all(np.isfinite(volume)):
        if np.all(np.isfinite(original)):
            raise InputError(source, f"intensities up to {float(np.abs(original).max()):.3g} overflow 32-bit "
                                     "floats (rescale the image)")
        raise InputError(source, "image holds NaN or infinite values")
    low = float(volume.min())
    high = float(np.percentile(volume, INTENSITY_PERCENTILE))
    if high <= max(low, 0.0):
        high = float(volume.max())
        if high <= max(low, 0.0):
            raise InputError(source, "image is constant or has no positive intensities")
    return np.clip(volume / high, 0.0, 1.0) * 255.0


def to_network_range(image_u8: np.ndarray) -> np.ndarray:
    """``uint8`` 0..255 model-grid image -> ``float32`` in [-1, 1], the range the networks are trained on."""
    return image_u8.astype(np.float32) / 127.5 - 1.0


def _ras_slice_to_view(ras_slice: np.ndarray) -> np.ndarray:
    """``(..., A, S)`` constant-R slice -> ``(..., S descending, A descending)`` radiological view."""
    return np.flip(np.swapaxes(ras_slice, -1, -2), axis=(-2, -1))


def _view_to_ras_slice(view: np.ndarray) -> np.ndarray:
    return np.swapaxes(np.flip(view, axis=(-2, -1)), -1, -2)


def native_slice(volume_zyx: np.ndarray, grid: SagittalGrid, index: int) -> np.ndarray:
    """The native-resolution sagittal slice ``index`` (along R) as ``(S, A)`` view, no resampling."""
    if not 0 <= index < grid.num_sagittal:
        raise IndexError(f"sagittal slice {index} out of range 0..{grid.num_sagittal - 1}")
    return _ras_slice_to_view(grid.reorientation.to_ras(volume_zyx)[..., index, :, :])


def _resample(
    view: np.ndarray,
    grid: SagittalGrid,
    *,
    order: int,
    forward: bool,
    cval: float = 0.0,
) -> np.ndarray:
    rows, cols = grid.rows, grid.cols
    if forward:
        matrix = (rows.scale, cols.scale)
        offset = (rows.offset, cols.offset)
        shape = (rows.model_size, cols.model_size)
    else:
        matrix = (1.0 / rows.scale, 1.0 / cols.scale)
        offset = (-rows.offset / rows.scale, -cols.offset / cols.scale)
        shape = (rows.native_size, cols.native_size)
    return ndimage.affine_transform(
        view,
        matrix,
        offset=offset,
        output_shape=shape,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
    )


def image_to_model(view: np.ndarray, grid: SagittalGrid) -> np.ndarray:
    """Native ``(S, A)`` intensity slice -> ``(H, W)`` float32 on the 1 mm model grid (linear; 320 x 320 unless
    grown)."""
    return _resample(np.asarray(view, dtype=np.float32), grid, order=1, forward=True)


def labels_to_model(view: np.ndarray, grid: SagittalGrid) -> np.ndarray:
    """Native ``(S, A)`` class slice -> ``(H, W)`` ``uint8`` model-grid classes (nearest neighbour only)."""
    return _resample(np.asarray(view, dtype=np.uint8), grid, order=0, forward=True)


def soft_labels_to_model(view: np.ndarray, grid: SagittalGrid, *, num_classes: int = 4) -> np.ndarray:
    """Native ``(S, A)`` class slice -> ``(num_classes, 320, 320)`` float32 class fractions in [0, 1].

    Each one-hot channel is low-pass filtered before sampling (Gaussian, sigma = 0.35 of the down-sampling
    factor) so the 1 mm grid keeps sub-pixel boundary positions. Used to measure how much of a native mask
    the 1 mm grid can carry; training targets stay nearest-neighbour (:func:`labels_to_model`).
    """
    sigma = tuple(0.35 * axis.scale if axis.scale > 1 else 0.0 for axis in (grid.rows, grid.cols))
    channels = [ndimage.gaussian_filter((view == c).astype(np.float32), sigma) for c in range(num_classes)]
    return np.stack(
        [
            _resample(channel, grid, order=1, forward=True, cval=float(c == 0))
            for c, channel in enumerate(channels)
        ]
    )


def field_of_view_mask(grid: SagittalGrid) -> np.ndarray:
    """``(H, W)`` bool on the model grid: the pixels :func:`restore_probabilities` reads for some native pixel of
    the slice (those inside its field of view, and the neighbours its edge pixels interpolate with).

    The rest of the canvas is padding around a scan smaller than it: nothing a network draws there is in the
    scan, and the restored result never shows it.
    """

    def inside(axis: AxisResampling) -> np.ndarray:
        first, last = (np.array([0.0, axis.native_size - 1.0]) - axis.offset) / axis.scale  # model coordinates
        pixels = np.arange(axis.model_size)
        return (pixels >= np.floor(first)) & (pixels <= np.floor(last) + 1)

    return inside(grid.rows)[:, None] & inside(grid.cols)[None, :]


def restore_labels(labels: np.ndarray, grid: SagittalGrid) -> np.ndarray:
    """``(H, W)`` model-grid class map -> native ``(S, A)`` slice (nearest neighbour)."""
    return _resample(np.asarray(labels, dtype=np.uint8), grid, order=0, forward=False)


def restore_probabilities(
    probabilities: np.ndarray,
    grid: SagittalGrid,
    *,
    background_channel: int | None = 0,
) -> np.ndarray:
    """``(C, H, W)`` model-grid per-class maps -> ``(C, S, A)`` on the native slice grid (linear).

    Native pixels outside the model's field of view get probability 1 for ``background_channel`` and 0 for the
    others (use ``None`` to fill every channel with 0, for example for uncertainty maps).
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    restored = [
        _resample(
            channel,
            grid,
            order=1,
            forward=False,
            cval=1.0 if background_channel is not None and c == background_channel else 0.0,
        )
        for c, channel in enumerate(probabilities)
    ]
    return np.stack(restored)


def slices_to_volume(
    views: np.ndarray,
    indices: Sequence[int],
    grid: SagittalGrid,
    *,
    fill: float = 0,
) -> np.ndarray:
    """Put native-resolution sagittal views back into a volume on the scan's own grid.

    Args:
        views: ``(N, S, A)`` or ``(N, C, S, A)`` slices as returned by :func:`restore_labels` (stacked).
        indices: the sagittal index (along R) of each view.
        grid: the scan's grid.
        fill: value of voxels in slices that were not given (0: background).

    Returns:
        ``(z, y, x)`` (or ``(C, z, y, x)``) array in SimpleITK order, the dtype of ``views``.
    """
    views = np.asarray(views)
    channels = views.shape[1:-2]
    rows, cols = grid.rows.native_size, grid.cols.native_size
    ras = np.full((*channels, grid.num_sagittal, cols, rows), fill, dtype=views.dtype)
    for view, index in zip(views, indices, strict=True):
        ras[..., index, :, :] = _view_to_ras_slice(view)
    return np.ascontiguousarray(grid.reorientation.from_ras(ras))


def select_slices(grid: SagittalGrid, slices: Literal["central", "all"] | Sequence[int]) -> list[int]:
    """Sagittal indices for ``central`` (the paper's 2D setting), ``all``, or an explicit list."""
    if slices == "central":
        return [grid.central_index]
    if slices == "all":
        return list(range(grid.num_sagittal))
    indices = [int(i) for i in slices]
    for i in indices:
        if not 0 <= i < grid.num_sagittal:
            raise IndexError(f"sagittal slice {i} out of range 0..{grid.num_sagittal - 1}")
    return indices


@dataclass(frozen=True)
class PreparedScan:
    """A scan on the model grid.

    Attributes:
        images: ``(N, H, W)`` ``uint8`` intensities, 0..255 after 98th-percentile scaling (320 x 320 unless
            the grid was grown to cover the field of view).
        labels: ``(N, H, W)`` ``uint8`` classes in {0, 1, 2, 3}, or ``None`` without a mask.
        indices: sagittal index of each slice along R.
        grid: the native <-> model mapping.
    """

    images: np.ndarray
    labels: np.ndarray | None
    indices: list[int]
    grid: SagittalGrid


def prepare_scan(
    volume_zyx: np.ndarray,
    geometry: Geometry,
    *,
    classes_zyx: np.ndarray | None = None,
    slices: Literal["central", "all"] | Sequence[int] = "central",
    require_sagittal: bool = True,
    source: str | Path | None = None,
    cover_field_of_view: bool = False,
) -> PreparedScan:
    """Preprocess a scan (and its class map, already mapped by :func:`spinesegdiff.data.labels.to_classes`).

    Args:
        volume_zyx: 3D intensities in SimpleITK order.
        geometry: their geometry.
        classes_zyx: optional class map on the same grid.
        slices: which sagittal slices.
        require_sagittal: refuse scans acquired in the axial or coronal plane (their sagittal reformats are
            too coarse for the model); isotropic 3D scans are accepted.
        source: the image file, named in error messages.
        cover_field_of_view: grow the model grid beyond 320 x 320 where the slice's field of view is larger
            (:func:`plan_grid`): ``images`` are then ``(N, H, W)`` with ``H, W >= 320``.
    """
    if volume_zyx.ndim != 3:
        raise InputError(source, f"image is {volume_zyx.ndim}D, a 3D volume is expected")
    grid = plan_grid(volume_zyx.shape, geometry, cover_field_of_view=cover_field_of_view)
    if require_sagittal and grid.plane in ("axial", "coronal"):
        raise InputError(source, f"scan is {grid.plane}, not sagittal (spacing {geometry.spacing} mm)")
    normalised = normalise_intensity(volume_zyx, source=source)
    indices = select_slices(grid, slices)
    images = np.stack([image_to_model(native_slice(normalised, grid, i), grid) for i in indices])
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    labels = None
    if classes_zyx is not None:
        labels = np.stack([labels_to_model(native_slice(classes_zyx, grid, i), grid) for i in indices])
    return PreparedScan(images=images, labels=labels, indices=indices, grid=grid)
