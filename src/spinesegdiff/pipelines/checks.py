"""Checks around inference: does the slice to segment carry an image, and does the result look like a spine?

Before inference, :func:`check_slice_signal` refuses a sagittal slice that is blank (constant), mostly zeros, or
pure noise (neighbouring pixels uncorrelated), so the model is never asked to draw a spine on nothing. After
inference, :func:`spine_quality` measures the segmented slice on the 1 mm model grid (areas, vertebral bodies and
discs alternating from superior to inferior, the canal behind the bodies, scattered fragments) and returns a
verdict: ``ok``, ``doubtful`` (the result is written with a warning) or ``implausible`` (refused by
:func:`check_spine_quality`).

The thresholds were set on the 33 real SPIDER T2 SPACE scans and 18 external 2D T2 scans of the shared data (all
pass with a wide margin, see ``docs/ROBUSTNESS.md``), and on blank, noise and constant inputs (all refused).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from spinesegdiff.data.labels import DISC, SPINAL_CANAL, VERTEBRA
from spinesegdiff.data.preprocess import MODEL_SPACING_MM
from spinesegdiff.errors import InputError

MAX_ZERO_FRACTION = 0.6
"""A slice with more pixels at its lowest value than this is mostly empty (real scans: at most 0.16)."""
MIN_SIGNAL_FRACTION = 0.2
"""Pixels above 5 % of the slice's 98th percentile must cover at least this (real scans: at least 0.52)."""
MIN_NEIGHBOUR_CORRELATION = 0.5
"""Correlation of neighbouring pixels; an image has smooth structure, noise none (real scans: at least 0.89)."""


def _neighbour_correlation(picture: np.ndarray) -> float:
    """The smaller of the correlations of each pixel with its neighbour down and to the right."""
    values = picture.astype(np.float32) - np.float32(picture.mean())
    correlations = []
    for a, b in ((values[1:], values[:-1]), (values[:, 1:], values[:, :-1])):
        norm = float(np.sqrt(np.einsum("ij,ij->", a, a, dtype=np.float64) * np.einsum("ij,ij->", b, b,
                                                                                      dtype=np.float64)))
        correlations.append(float(np.einsum("ij,ij->", a, b, dtype=np.float64)) / norm if norm else 0.0)
    return min(correlations)


def slice_signal(picture: np.ndarray) -> dict[str, float]:
    """What a sagittal slice holds: fraction at its minimum, fraction with signal, neighbour correlation."""
    picture = np.asarray(picture)
    low, high = float(picture.min()), float(np.percentile(picture, 98))
    zero = float(np.mean(picture == picture.min()))
    signal = float(np.mean(picture > low + 0.05 * (high - low))) if high > low else 0.0
    correlation = _neighbour_correlation(picture) if picture.max() > low else 0.0
    return {"minimum": low, "maximum": float(picture.max()), "at_minimum": zero, "signal": signal,
            "correlation": correlation}


def check_slice_signal(picture: np.ndarray, index: int, source: str | Path | None) -> None:
    """Refuse a sagittal slice (``index`` of the scan) that is blank, mostly empty or noise.

    Raises:
        InputError: naming what was found, e.g. ``central sagittal slice 4 is blank (every pixel is 0)``.
    """
    found = slice_signal(picture)
    where = f"central sagittal slice {index}"
    if found["maximum"] <= found["minimum"]:
        raise InputError(source, f"{where} is blank (every pixel is {found['minimum']:g})")
    if found["at_minimum"] > MAX_ZERO_FRACTION:
        raise InputError(source, f"{where} is mostly empty ({found['at_minimum']:.0%} of its pixels are "
                                 f"{found['minimum']:g})")
    if found["signal"] < MIN_SIGNAL_FRACTION:
        raise InputError(source, f"{where} carries almost no signal (only {found['signal']:.0%} of its pixels "
                                 "are above 5% of its bright level)")
    if found["correlation"] < MIN_NEIGHBOUR_CORRELATION:
        raise InputError(source, f"{where} looks like noise, not an image (neighbouring pixels correlate "
                                 f"{found['correlation']:.2f}, real scans above 0.89)")


def _components(mask: np.ndarray, min_pixels: int) -> list[tuple[float, float, int]]:
    """Connected parts of ``mask`` with at least ``min_pixels`` pixels: ``(row centre, column centre, size)``."""
    from scipy import ndimage

    parts, count = ndimage.label(mask)
    if count == 0:
        return []
    sizes = np.bincount(parts.ravel(), minlength=count + 1)[1:]
    keep = [k + 1 for k in range(count) if sizes[k] >= min_pixels]
    centres = ndimage.center_of_mass(mask, parts, keep) if keep else []
    return [(float(r), float(c), int(sizes[k - 1])) for (r, c), k in zip(centres, keep, strict=True)]


def canal_behind_bodies_mm(labels: np.ndarray) -> float | None:
    """How far (mm) the canal's mean column lies behind the vertebrae's on one model-grid slice (columns anterior
    to posterior; negative: in front); ``None`` without canal or vertebra."""
    canal, vertebra = labels == SPINAL_CANAL, labels == VERTEBRA
    if not canal.any() or not vertebra.any():
        return None
    return float((np.nonzero(canal)[1].mean() - np.nonzero(vertebra)[1].mean()) * MODEL_SPACING_MM)


def spine_measures(labels: np.ndarray) -> dict[str, Any]:
    """Measure one segmented sagittal slice on the model grid (rows superior to inferior, columns anterior to
    posterior, :data:`~spinesegdiff.data.preprocess.MODEL_SPACING_MM` pixels)."""
    from scipy import ndimage

    pixel = MODEL_SPACING_MM**2
    structures = labels > 0
    parts, count = ndimage.label(structures)
    sizes = np.bincount(parts.ravel(), minlength=count + 1)[1:]
    small = int(sizes[sizes * pixel < 20.0].sum())
    bodies = _components(labels == VERTEBRA, int(150 / pixel))
    discs = _components(labels == DISC, int(40 / pixel))
    sequence = [kind for _, kind in sorted([(r, "VB") for r, _, _ in bodies] + [(r, "IVD") for r, _, _ in discs])]
    alternations = sum(a != b for a, b in itertools.pairwise(sequence))
    behind = canal_behind_bodies_mm(labels)
    return {
        "SC_mm2": round(float((labels == SPINAL_CANAL).sum()) * pixel, 1),
        "VB_mm2": round(float((labels == VERTEBRA).sum()) * pixel, 1),
        "IVD_mm2": round(float((labels == DISC).sum()) * pixel, 1),
        "vertebrae": len(bodies),
        "discs": len(discs),
        "alternations": alternations,
        "canal_behind_bodies_mm": None if behind is None else round(behind, 1),
        "fragment_fraction": round(small / max(int(structures.sum()), 1), 3),
    }


class QualityWarning(UserWarning):
    """A segmentation that was written but is doubtful: it does not look like a whole lumbar spine (see
    :func:`spine_quality`), or the scan's field of view was larger than even a grown model grid holds."""


# Limits of a plausible result on the central sagittal slice; the real scans' extremes are in brackets.
DOUBTFUL_LIMITS = {"VB_mm2": 2500.0, "IVD_mm2": 400.0, "discs": 3, "alternations": 6}
"""Below any of these the result is doubtful (real scans at least: 4064 mm2, 980 mm2, 5 discs, 10 alternations)."""
MAX_CANAL_BEHIND_MM = 40.0
"""The canal lies 0 to this many mm behind the vertebrae's centre (real scans: 5.7 to 27.6 mm)."""
MAX_COVERED_FRACTION = 0.5
"""Structures covering more of the 320 x 320 slice than this are not a spine (real scans: at most 0.16)."""
MAX_FRAGMENT_FRACTION = 0.05
"""Share of the structures in parts under 20 mm2 (real scans: at most 0.005)."""
IMPLAUSIBLE_LIMITS = {"VB_mm2": 1000.0, "IVD_mm2": 100.0, "discs": 1}
"""Below any of these there is no spine to speak of: the result is refused."""


def spine_quality(labels: np.ndarray) -> dict[str, Any]:
    """Verdict on one segmented model-grid slice: ``{"verdict": "ok" | "doubtful" | "implausible", "reasons":
    [...], "measures": {...}}`` (see :func:`spine_measures` and the limits above)."""
    measures = spine_measures(labels)
    covered = (measures["SC_mm2"] + measures["VB_mm2"] + measures["IVD_mm2"]) / (labels.size * MODEL_SPACING_MM**2)
    measures["covered_fraction"] = round(covered, 3)
    missing = [f"{key} {measures[key]:g} < {limit:g}" for key, limit in IMPLAUSIBLE_LIMITS.items()
               if measures[key] < limit]
    reasons = [f"{key} {measures[key]:g} < {limit:g}" for key, limit in DOUBTFUL_LIMITS.items()
               if measures[key] < limit]
    behind = measures["canal_behind_bodies_mm"]
    if behind is None:
        reasons.append("no spinal canal (a slice beside the midline shows none)")
    elif not 0.0 <= behind <= MAX_CANAL_BEHIND_MM:
        reasons.append(f"canal not behind the vertebrae (offset {behind} mm)")
    if covered > MAX_COVERED_FRACTION:
        reasons.append(f"structures cover {covered:.0%} of the slice")
    if measures["fragment_fraction"] > MAX_FRAGMENT_FRACTION:
        reasons.append(f"{measures['fragment_fraction']:.0%} of the structures are small fragments")
    verdict = "implausible" if missing else "doubtful" if reasons else "ok"
    return {"verdict": verdict, "reasons": missing or reasons, "measures": measures}


def warn_doubtful(source: str | Path | None, problem: str, *, stacklevel: int = 2) -> None:
    """Warn with :class:`QualityWarning` that a written result is doubtful, the message naming the file as an
    :class:`~spinesegdiff.errors.InputError` does (``stacklevel`` counts from the caller, as for
    :func:`warnings.warn`)."""
    import warnings

    where = "" if source is None else f"{source}: "
    warnings.warn(f"{where}{problem}", QualityWarning, stacklevel=stacklevel + 1)


def check_spine_quality(quality: dict[str, Any], source: str | Path | None) -> None:
    """Refuse an implausible result (no spine found); warn with :class:`QualityWarning` about a doubtful one."""
    reasons = "; ".join(quality["reasons"])
    if quality["verdict"] == "implausible":
        raise InputError(source, f"no plausible lumbar spine found in the scan ({reasons})")
    if quality["verdict"] == "doubtful":
        warn_doubtful(source, f"the segmentation does not look like a whole lumbar spine ({reasons})", stacklevel=3)


def check_contrast(labels: np.ndarray, image: np.ndarray, source: str | Path | None) -> str:
    """The contrast of a segmented slice (``(H, W)`` classes and the intensities they were segmented on), as
    :func:`~spinesegdiff.anatomy.measures.is_t2_like` judges it, named as in
    :data:`~spinesegdiff.anatomy.measures.CONTRASTS`. Warns with :class:`QualityWarning` when it is not T2-like:
    every model shipped here was trained on T2-weighted scans, and on T1-like input the pipeline loses Dice
    (docs/RESULTS.md, T1 phantoms)."""
    from spinesegdiff.anatomy import SagittalSlice
    from spinesegdiff.anatomy.measures import CONTRASTS, is_t2_like

    t2_like = is_t2_like(SagittalSlice(labels=np.asarray(labels), row_mm=MODEL_SPACING_MM, col_mm=MODEL_SPACING_MM,
                                       image=np.asarray(image, dtype=np.float32)))
    if t2_like is False:
        warn_doubtful(source, "the slice does not look T2-weighted (its spinal canal is not brighter than its "
                              "vertebrae): the models were trained on T2-weighted scans only, so expect a lower Dice "
                              "than on T2 (the model card, spinesegdiff/assets/MODEL_CARD.md, says how much)",
                      stacklevel=3)
    return CONTRASTS[t2_like]
