"""Synthetic sagittal lumbar-spine phantoms for tests and smoke runs (never for a reported figure).

A phantom is a short stack of sagittal slices laid out like a SPIDER series (direction PIR: columns run
anterior -> posterior, rows superior -> inferior, slices towards the right), with a label map in the four
classes: a lordotic column of vertebral bodies with spinous processes (vertebra), discs between them, and a
spinal canal behind the bodies. Contrast is T2-like (bright discs and canal) or T1-like (bright marrow and fat,
dark discs and canal), with Rician-like noise and a smooth multiplicative bias field. Optional pathologies: a
narrowed, dark disc and an anteriorly slipped vertebra (spondylolisthesis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from spinesegdiff.data.io import Geometry
from spinesegdiff.data.labels import BACKGROUND, DISC, SPINAL_CANAL, VERTEBRA

PIR_DIRECTION: tuple[float, ...] = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
"""ITK direction of a SPIDER series: x -> posterior, y -> inferior, z -> right (LPS world)."""

# Mean intensity per tissue (background soft tissue, canal, vertebra, disc, subcutaneous fat), in [0, 1].
_TISSUE = {
    "T2": {"soft": 0.28, SPINAL_CANAL: 0.92, VERTEBRA: 0.42, DISC: 0.78, "fat": 0.55, "dark_disc": 0.3},
    "T1": {"soft": 0.35, SPINAL_CANAL: 0.18, VERTEBRA: 0.72, DISC: 0.3, "fat": 0.9, "dark_disc": 0.2},
}


@dataclass(frozen=True)
class Phantom:
    """A synthetic scan: ``image`` and ``labels`` are ``(slices, rows, cols)`` in SimpleITK order.

    ``image`` is ``float32`` in [0, 1]; ``labels`` is ``uint8`` in {0, 1, 2, 3}.
    """

    image: np.ndarray
    labels: np.ndarray
    geometry: Geometry


def _sagittal_slice(
    rows_mm: np.ndarray,
    cols_mm: np.ndarray,
    *,
    rng: np.random.Generator,
    lateral: float,
    narrowed_disc: int | None,
    slipped_vertebra: int | None,
    num_vertebrae: int,
) -> np.ndarray:
    """Label map of one slice; ``lateral`` in [0, 1] is the distance from the midline (0 = central)."""
    height_mm, width_mm = rows_mm[-1, 0], cols_mm[0, -1]
    labels = np.full(rows_mm.shape, BACKGROUND, dtype=np.uint8)
    body_h, disc_h, body_w = (
        rng.uniform(24, 28),
        rng.uniform(8, 11),
        rng.uniform(32, 38) * (1 - 0.25 * lateral),
    )
    pitch = body_h + disc_h
    top = (height_mm - num_vertebrae * pitch + disc_h) / 2
    curve_amp, curve_phase = rng.uniform(6, 12), rng.uniform(-0.3, 0.3)

    def column_centre(s_mm: np.ndarray | float) -> np.ndarray | float:
        return width_mm * 0.42 + curve_amp * np.sin(
            np.pi * (s_mm - top) / (num_vertebrae * pitch) + curve_phase
        )

    centre_line = column_centre(rows_mm)
    canal_w = rng.uniform(12, 16) * max(0.0, 1 - 1.6 * lateral)
    canal_front = centre_line + body_w / 2 + 1.5
    canal = (cols_mm > canal_front) & (cols_mm < canal_front + canal_w) & (rows_mm > top - 15)
    labels[canal] = SPINAL_CANAL
    for v in range(num_vertebrae):
        s0 = top + v * pitch
        shift = 6.0 if slipped_vertebra == v else 0.0
        centre = column_centre(s0 + body_h / 2) + shift
        d_s = np.abs(rows_mm - (s0 + body_h / 2)) / (body_h / 2)
        d_a = np.abs(cols_mm - centre) / (body_w / 2)
        body = np.maximum(d_s, d_a) ** 4 + 0.15 * np.minimum(d_s, d_a) ** 2 < 1.0
        labels[body] = VERTEBRA
        if lateral < 0.5:  # spinous process behind the canal
            proc_s = (rows_mm - (s0 + body_h * 0.6)) / (body_h * 0.28)
            proc_a = (cols_mm - (centre + body_w / 2 + canal_w + 16)) / 14
            labels[(proc_s**2 + proc_a**2 < 1.0) & (labels == BACKGROUND)] = VERTEBRA
        if v < num_vertebrae - 1:
            d_top = s0 + body_h
            this_h = disc_h * (0.35 if narrowed_disc == v else 1.0)
            mid = d_top + disc_h / 2
            disc_centre = (column_centre(mid) + centre) / 2
            e_s = (rows_mm - mid) / (this_h / 2 + 0.8)
            e_a = (cols_mm - disc_centre) / (body_w / 2 + 1.0)
            labels[(e_s**2 + e_a**6 < 1.0) & (labels != VERTEBRA)] = DISC
    return labels


def make_phantom(
    *,
    shape: tuple[int, int, int] = (5, 256, 200),
    spacing: tuple[float, float, float] = (1.2, 1.2, 3.0),
    contrast: Literal["T1", "T2"] = "T2",
    noise: float = 0.04,
    bias: float = 0.25,
    narrowed_disc: int | None = None,
    slipped_vertebra: int | None = None,
    num_vertebrae: int = 6,
    seed: int = 0,
) -> Phantom:
    """A random lumbar-spine-like sagittal series.

    Args:
        shape: ``(slices, rows, cols)``: sagittal slices along R, rows superior -> inferior, columns
            anterior -> posterior.
        spacing: ITK spacing ``(col, row, slice)`` in mm, as SimpleITK lists it for a PIR series.
        contrast: ``T2`` (bright discs and canal) or ``T1`` (bright marrow and fat).
        noise: standard deviation of the Gaussian noise added to real and imaginary parts (magnitude image).
        bias: amplitude of the smooth multiplicative bias field (0 = none).
        narrowed_disc: index of a disc (0 = highest) made narrow and dark, or ``None``.
        slipped_vertebra: index of a vertebra (0 = highest) shifted 6 mm posteriorly out of line, or ``None``.
        num_vertebrae: vertebral bodies in view.
        seed: seeds every random choice.
    """
    if contrast not in _TISSUE:
        raise ValueError(f"contrast must be 'T1' or 'T2', got {contrast!r}")
    rng = np.random.default_rng(seed)
    n_slices, n_rows, n_cols = shape
    col_sp, row_sp, _ = spacing
    rows_mm, cols_mm = np.meshgrid(np.arange(n_rows) * row_sp, np.arange(n_cols) * col_sp, indexing="ij")
    anatomy_seed = int(rng.integers(2**31))
    labels = np.stack(
        [
            _sagittal_slice(
                rows_mm,
                cols_mm,
                rng=np.random.default_rng(anatomy_seed),
                lateral=abs(k - (n_slices - 1) / 2) / max(n_slices / 2, 1),
                narrowed_disc=narrowed_disc,
                slipped_vertebra=slipped_vertebra,
                num_vertebrae=num_vertebrae,
            )
            for k in range(n_slices)
        ]
    )
    tissue = _TISSUE[contrast]
    image = np.full(labels.shape, tissue["soft"], dtype=np.float32)
    for cls in (SPINAL_CANAL, VERTEBRA, DISC):
        image[labels == cls] = tissue[cls]
    if narrowed_disc is not None:
        # the narrowed disc is degenerated: darker than the others
        disc_rows = np.nonzero((labels == DISC).any(axis=(0, 2)))[0]
        groups = np.split(disc_rows, np.nonzero(np.diff(disc_rows) > 1)[0] + 1)
        if narrowed_disc < len(groups):
            band = np.zeros(n_rows, dtype=bool)
            band[groups[narrowed_disc]] = True
            image[(labels == DISC) & band[None, :, None]] = tissue["dark_disc"]
    fat = (cols_mm > cols_mm.max() * 0.9) | (cols_mm < cols_mm.max() * 0.05)
    image[:, fat] = tissue["fat"]
    image *= rng.uniform(0.9, 1.1, size=labels.shape).astype(np.float32) ** 0.5  # tissue texture
    if bias > 0:
        z = np.linspace(-1, 1, n_slices)[:, None, None]
        y = np.linspace(-1, 1, n_rows)[None, :, None]
        x = np.linspace(-1, 1, n_cols)[None, None, :]
        coef = rng.uniform(-1, 1, size=4)
        image *= np.exp(bias * (coef[0] * x + coef[1] * y + coef[2] * x * y + coef[3] * z)).astype(np.float32)
    real = image + rng.normal(0, noise, size=image.shape)
    imag = rng.normal(0, noise, size=image.shape)
    image = np.sqrt(real**2 + imag**2).astype(np.float32)
    image = np.clip(image / max(float(image.max()), 1e-6), 0.0, 1.0)
    geometry = Geometry(
        spacing=tuple(float(s) for s in spacing), origin=(0.0, 0.0, 0.0), direction=PIR_DIRECTION
    )
    return Phantom(image=image, labels=labels, geometry=geometry)


def phantom_batch(
    count: int,
    *,
    size: int = 64,
    contrast: Literal["T1", "T2", "mixed"] = "T2",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Central slices of ``count`` phantoms on a square ``size`` grid, for model tests.

    Returns:
        ``images`` ``(count, size, size)`` ``float32`` in [-1, 1] and ``labels`` ``(count, size, size)`` ``uint8``.
    """
    images, labels = [], []
    spacing = 320.0 / size
    for k in range(count):
        this_contrast = contrast if contrast != "mixed" else ("T1", "T2")[k % 2]
        phantom = make_phantom(
            shape=(1, size, size),
            spacing=(spacing, spacing, 3.0),
            contrast=this_contrast,
            seed=seed + k,
            num_vertebrae=5,
        )
        images.append(phantom.image[0] * 2 - 1)
        labels.append(phantom.labels[0])
    return np.stack(images).astype(np.float32), np.stack(labels)
