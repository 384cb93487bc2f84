"""Synthetic sagittal label maps with known geometry for the level tests (tests/test_levels*.py).

A straight column of rectangular vertebral bodies and discs, tilted by ``tilt_deg``, with a canal of known AP
width behind it and a spinous process behind the canal for each body, on an anisotropic pixel grid: every
height, width and offset is known in millimetres.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from spinesegdiff.anatomy import SagittalSlice
from spinesegdiff.data.labels import DISC, SPINAL_CANAL, VERTEBRA

T2 = {"background": 0.2, SPINAL_CANAL: 0.9, VERTEBRA: 0.4, DISC: 0.6}
T1 = {"background": 0.3, SPINAL_CANAL: 0.15, VERTEBRA: 0.7, DISC: 0.3}


def spine_slice(*, row_mm: float = 0.5, col_mm: float = 0.6, shape: tuple[int, int] = (560, 360),
                tilt_deg: float = 0.0, bodies: int = 5, body_h: float = 25.0, disc_h: float = 9.0,
                width: float = 36.0, canal_ap: float = 14.0, slips: Mapping[int, float] | None = None,
                lowest: str = "disc", top_offset_mm: float = 0.0, missing_discs: Sequence[int] = (),
                contrast: Mapping = T2, disc_intensity: Mapping[int, float] | None = None,
                uncertainty_rim_px: int = 0, body_depths: Mapping[int, float] | None = None,
                canal_gaps: Sequence[int] = ()) -> SagittalSlice:
    """A labelled slice, bodies counted from the top (0) down.

    Args:
        slips: body index -> anterior shift in mm.
        lowest: ``disc`` (a disc below the lowest body, the sacrum unlabelled), ``vertebra`` (the stack ends on a
            body) or ``sacrum`` (a disc, then a 60 mm block reaching the image's lower edge).
        top_offset_mm: moves the stack up (a positive value cuts the top body by the image's upper edge).
        missing_discs: indices of the discs below these bodies left out (fused levels).
        disc_intensity: disc index -> its intensity (default the contrast's disc value).
        uncertainty_rim_px: if positive, a heatmap of 0.8 on the structures' edges this many pixels wide.
        body_depths: body index -> its AP depth in mm (default ``width``), its posterior wall kept in place.
        canal_gaps: indices of the bodies behind whose lower disc the canal is missing (a stenosis that a
            segmentation lost: the canal in pieces).
    """
    slips = dict(slips or {})
    rows, cols = np.meshgrid(np.arange(shape[0]) * row_mm, np.arange(shape[1]) * col_mm, indexing="ij")
    centre = np.array([shape[0] * row_mm / 2, shape[1] * col_mm / 2])
    theta = np.deg2rad(tilt_deg)
    down, anterior = np.array([np.cos(theta), np.sin(theta)]), np.array([np.sin(theta), -np.cos(theta)])
    v = (rows - centre[0]) * down[0] + (cols - centre[1]) * down[1]
    u = (rows - centre[0]) * anterior[0] + (cols - centre[1]) * anterior[1]
    labels = np.zeros(shape, dtype=np.uint8)
    image = np.full(shape, contrast["background"], dtype=np.float32)
    pitch = body_h + disc_h
    top = -bodies * pitch / 2 - top_offset_mm
    back = -width / 2 - 1.0
    canal = (u < back) & (u > back - canal_ap) & (v > top - 20) & (v < top + bodies * pitch + 40)
    for k in canal_gaps:
        canal &= ~((v >= top + k * pitch + body_h) & (v < top + (k + 1) * pitch))
    labels[canal] = SPINAL_CANAL
    for k in range(bodies):
        start, shift = top + k * pitch, slips.get(k, 0.0)
        depth = (body_depths or {}).get(k, width)
        body = (v >= start) & (v < start + body_h) & (u - shift >= -width / 2) & (u - shift <= depth - width / 2)
        labels[body] = VERTEBRA
        process = ((u - (back - canal_ap - 12)) / 8) ** 2 + ((v - (start + 0.6 * body_h)) / 6) ** 2 < 1
        labels[process] = VERTEBRA
        last = k == bodies - 1
        if k in missing_discs or (last and lowest == "vertebra"):
            continue
        below = shift if last else (shift + slips.get(k + 1, 0.0)) / 2
        disc = (v >= start + body_h) & (v < start + pitch) & (np.abs(u - below) <= width / 2)
        labels[disc] = DISC
        image[disc] = (disc_intensity or {}).get(k, contrast[DISC])
    if lowest == "sacrum":
        labels[(v >= top + bodies * pitch) & (np.abs(u) <= 0.6 * width)] = VERTEBRA
    for cls in (SPINAL_CANAL, VERTEBRA):
        image[labels == cls] = contrast[cls]
    heat = None
    if uncertainty_rim_px:
        from scipy import ndimage

        edges = np.zeros(shape, dtype=bool)
        for cls in (SPINAL_CANAL, VERTEBRA, DISC):
            mask = labels == cls
            edges |= mask & ~ndimage.binary_erosion(mask, iterations=uncertainty_rim_px)
            edges |= ndimage.binary_dilation(mask, iterations=uncertainty_rim_px) & ~mask
        heat = np.where(edges, 0.8, 0.02).astype(np.float32)
    return SagittalSlice(labels=labels, row_mm=row_mm, col_mm=col_mm, image=image, uncertainty=heat, index=0)
