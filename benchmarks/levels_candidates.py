"""Candidate per-level measures against SPIDER's radiologists, on the slices cached by ``levels_cache.py``.

Every candidate is computed on the reference masks and on the held-out U-Net's prediction of the same
mid-sagittal slice, matched to the graded discs as :func:`spinesegdiff.evaluation.levels.compare_patient`
does, and scored with the statistic of its target (AUROC for narrowing and spondylolisthesis, Spearman with the
Pfirrmann grade) and a 95 % patient bootstrap interval. Candidates are fixed before they are measured (see
docs/LEVELS.md, "Candidates tried"); nothing here is tuned on the result.

    OMP_NUM_THREADS=1 python benchmarks/levels_candidates.py --cache cache/levels-slices \\
        --metadata ../shared/data/spider-metadata [--bootstrap 2000] [--canal-pieces off] [--out FILE.csv]
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from spinesegdiff.anatomy import SagittalSlice, measure_levels
from spinesegdiff.anatomy import measures as m
from spinesegdiff.anatomy.sagittal import Frame, bounding_box
from spinesegdiff.evaluation.levels import (
    SAME_DISC_MM,
    bootstrap_interval,
    compare_patient,
    read_gradings,
    spearman,
)
from spinesegdiff.evaluation.uncertainty_metrics import auroc

SOURCES = ("reference masks", "held-out U-Net")


def load(cache: Path, patient: str, source: str) -> tuple[SagittalSlice, list[SagittalSlice]]:
    """The central slice of ``source`` and all cached slices (central included), as the evaluation builds them."""
    data = np.load(cache / f"{patient}.npz")
    indices = [int(k) for k in data["indices"]]
    slices = []
    for j, index in enumerate(indices):
        if source == "reference masks":
            labels, heat = data["reference"][j], None
        else:
            labels, heat = data["unet"][j], data["entropy"][j].astype(np.float32)
        slices.append(SagittalSlice(labels=labels, row_mm=float(data["row_mm"]), col_mm=float(data["col_mm"]),
                                    image=data["image"][j], uncertainty=heat, index=index))
    return slices[indices.index(int(data["centre"]))], slices


Candidate = Callable[[dict[str, Any]], dict[int, float | None]]
"""A candidate: from a patient's context (``scan``, ``slices``, ``report``) to a value per disc rank."""


# --- Building blocks of the candidates that the report did not take (docs/LEVELS.md, "Candidates tried"). Each
# was fixed from its principle before it was measured against the gradings.

NUCLEUS_QUANTILE = 90.0
"""The nucleus' brightness is this percentile of its pixels: Pfirrmann grades the bright nuclear material that is
left, which the mean dilutes with the intranuclear cleft and the inner annulus."""
CSF_MARGIN_MM = 1.5
"""Clean CSF: canal pixels at least this far from the canal's edge (no partial volume with the dura, the
ligaments or the epidural fat)."""
ANNULUS_SHARE = 0.2
"""The annulus stands in the outer fifth of the disc's length at either end (anterior and posterior)."""
WALL_SHARE = 0.6
"""A body's posterior wall is followed over the central share of its height, away from the corners (rounded by
partial volume and osteophytes, and where a segmentation errs most)."""


def _percentile(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


def _inner_along(scan: SagittalSlice, disc: np.ndarray, frame: Frame
                 ) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """The disc's inner pixels (one pixel in from its edge; all of them for a disc of fewer than 10 inner
    pixels) as ``(rows, cols)``, their positions along ``frame`` (mm) and the 1st and 99th percentiles of those
    positions; ``None`` for an empty disc."""
    inner = m.erode(disc)
    inner = inner if inner.sum() >= 10 else disc
    if not inner.any():
        return None
    along, _ = frame.coordinates(scan.points_mm(inner))
    low, high = np.percentile(along, [1, 99])
    return np.argwhere(inner), along, float(low), float(high)


def _pixels(disc: np.ndarray, where: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = np.zeros_like(disc, dtype=bool)
    out[where[keep, 0], where[keep, 1]] = True
    return out


def nucleus_mask(scan: SagittalSlice, disc: np.ndarray, frame: Frame) -> np.ndarray:
    """The disc's nucleus: its inner pixels in the central ``measures.NUCLEUS_SHARE`` of its length along
    ``frame``."""
    found = _inner_along(scan, disc, frame)
    if found is None:
        return np.zeros_like(disc, dtype=bool)
    where, along, low, high = found
    return _pixels(disc, where, np.abs(along - (low + high) / 2) <= m.NUCLEUS_SHARE / 2 * (high - low))


def annulus_mask(scan: SagittalSlice, disc: np.ndarray, frame: Frame) -> np.ndarray:
    """The disc's annulus as seen mid-sagittally: its inner pixels in the outer :data:`ANNULUS_SHARE` of its
    length at either end."""
    found = _inner_along(scan, disc, frame)
    if found is None:
        return np.zeros_like(disc, dtype=bool)
    where, along, low, high = found
    edge = ANNULUS_SHARE * (high - low)
    return _pixels(disc, where, (along <= low + edge) | (along >= high - edge))


def clean_csf(scan: SagittalSlice, margin_mm: float = CSF_MARGIN_MM) -> np.ndarray:
    """Canal pixels at least ``margin_mm`` from the canal's edge; the canal one pixel in (``canal_inner``) where
    none is that far (a narrow canal)."""
    canal = scan.canal
    box = bounding_box(canal, 2)
    out = np.zeros_like(canal)
    if box is None:
        return out
    distance = ndimage.distance_transform_edt(canal[box], sampling=(scan.row_mm, scan.col_mm))
    out[box] = distance >= margin_mm
    return out if out.any() else scan.canal_inner


def csf_intensity(scan: SagittalSlice, disc_points: np.ndarray, frame: Frame, *, clean: bool = True,
                  local: bool = True) -> float | None:
    """CSF intensity: the median of the clean CSF (:func:`clean_csf`) in a strip twice the usual width through
    the disc's centre behind it (``local``), or of the whole canal's clean CSF (not ``local``: a reference that
    a stenosis at the level, its crowded nerve roots, cannot darken). ``clean=False``: the mean of the canal's
    inner pixels in the strip (the first version). ``None`` without image or CSF."""
    if scan.image is None:
        return None
    csf = clean_csf(scan) if clean else scan.canal_inner
    if not local:
        values = scan.image[csf]
        return float(np.median(values)) if values.size else None
    _, inside = m.canal_ap_mm(csf, disc_points, frame, scan, width=2 * m.strip_mm(scan))
    if not inside.any():
        return None
    values = scan.image[csf][inside]
    return float(np.median(values)) if clean else float(values.mean())


def nucleus_intensity(scan: SagittalSlice, disc: np.ndarray, frame: Frame, *, quantile: float | None = NUCLEUS_QUANTILE
                      ) -> float | None:
    """The nucleus' (:func:`nucleus_mask`) ``quantile`` percentile intensity, or its mean (``quantile=None``)."""
    if scan.image is None:
        return None
    values = scan.image[nucleus_mask(scan, disc, frame)]
    if not values.size:
        return None
    return float(values.mean()) if quantile is None else _percentile(values, quantile)


def posterior_wall(points: np.ndarray, frame: Frame, share: float = WALL_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """The body's posterior wall in ``frame``: for each 1 mm step across (along the spine) in the central
    ``share`` of its height, the most posterior position along the long axis. ``(across, along)`` arrays."""
    if len(points) < 3:
        return np.empty(0), np.empty(0)
    along, across = frame.coordinates(points)
    low, high = np.percentile(across, [1, 99])
    margin = (1 - share) / 2 * (high - low)
    kept = (across >= low + margin) & (across <= high - margin)
    if not kept.any():
        return np.empty(0), np.empty(0)
    bins = np.floor(across[kept]).astype(int)
    steps = np.unique(bins)
    backs = np.array([along[kept][bins == b].min() for b in steps])
    return steps + 0.5, backs


def wall_line(points: np.ndarray, frame: Frame) -> tuple[float, float] | None:
    """The posterior wall's line ``along = intercept + slope * across`` (Theil-Sen: the median slope, so a few
    wrong steps of a segmentation's edge do not tilt it); ``None`` with fewer than 3 steps."""
    from scipy.stats import theilslopes

    across, along = posterior_wall(points, frame)
    if across.size < 3:
        return None
    slope, intercept, _, _ = theilslopes(along, across)
    return float(intercept), float(slope)


def wall_slip(upper: np.ndarray, lower: np.ndarray, frame: Frame) -> float | None:
    """Anterior offset (mm) of the upper body's posterior wall line over the lower body's, both taken at the
    disc's centre (``frame``: the disc's own; ``upper``, ``lower``: the two bodies' points); ``None`` when a
    wall cannot be fitted."""
    upper_line, lower_line = wall_line(upper, frame), wall_line(lower, frame)
    if upper_line is None or lower_line is None:
        return None
    return upper_line[0] - lower_line[0]


def corner_slip(upper_band: np.ndarray, lower: np.ndarray, frame: Frame) -> float | None:
    """Meyerding-style: anterior offset (mm) of the upper body's posterior-inferior corner (the posterior edge of
    its lower endplate band, :func:`endplate_band`) over the lower body's posterior wall line extended to the
    corner's height; ``None`` when either is missing."""
    line = wall_line(lower, frame)
    if line is None or len(upper_band) < 3:
        return None
    along, across = frame.coordinates(upper_band)
    back = along <= np.percentile(along, 2)
    return float(along[back].mean() - (line[0] + line[1] * across[back].mean()))


def neighbour_height_ratio(discs: list[dict]) -> dict[int, float | None]:
    """Per disc rank: its height over the mean height of the whole discs next to it (the rank above and below);
    ``None`` where it or both neighbours have no height. ``discs``: the report's disc entries."""
    height = {d["rank"]: d.get("height_mm") for d in discs if d.get("rank") is not None}
    ratios: dict[int, float | None] = {}
    for rank, value in height.items():
        near = [height.get(r) for r in (rank - 1, rank + 1)]
        near = [h for h in near if h]
        ratios[rank] = value / float(np.mean(near)) if value is not None and near else None
    return ratios


def rows_for(cache: Path, gradings: dict, source: str, candidates: dict[str, Candidate]) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(cache.glob("*.npz"), key=lambda p: int(p.stem)):
        patient = path.stem
        if patient not in gradings:
            continue
        scan, slices = load(cache, patient, source)
        report = measure_levels(scan)
        context = {"scan": scan, "slices": slices, "report": report, "patient": patient}
        values = {name: candidate(context) for name, candidate in candidates.items()}
        compared = compare_patient(patient, report, gradings[patient])
        lowest = gradings[patient][0]["label"] if gradings[patient] else 1
        for row in compared.discs:
            rank = row["ivd_label"] - lowest + 1 if row["level"] is not None else None
            for name, by_rank in values.items():
                row[name] = by_rank.get(rank) if rank is not None else None
            rows.append({"source": source, **row})
    return rows


def auroc_of(score: str, label: str, sign: float) -> Callable[[list[dict]], float]:
    def statistic(rows: list[dict]) -> float:
        kept = [r for r in rows if r.get(score) is not None and r.get(label) is not None
                and np.isfinite(r[score])]
        return auroc(np.array([sign * r[score] for r in kept]), np.array([r[label] > 0 for r in kept]))
    return statistic


def spearman_of(score: str, grade: str) -> Callable[[list[dict]], float]:
    def statistic(rows: list[dict]) -> float:
        kept = [r for r in rows if r.get(score) is not None and np.isfinite(r[score])]
        return spearman([r[score] for r in kept], [r[grade] for r in kept])
    return statistic


def main(candidates: dict[str, tuple[str, str, Candidate]]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("cache/levels-slices"))
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--only", help="comma-separated candidate names")
    parser.add_argument("--out", type=Path, help="a CSV of the results")
    parser.add_argument("--canal-pieces", choices=("on", "off"), default="on",
                        help="off: the body is what lies in front of the canal's largest piece only (the first "
                             "version), not of every piece of at least instances.CANAL_PIECE_MM2")
    args = parser.parse_args()
    if args.canal_pieces == "off":
        from spinesegdiff.anatomy import instances

        instances.CANAL_PIECE_MM2 = None
    if args.only:
        candidates = {k: v for k, v in candidates.items() if k in args.only.split(",")}
    gradings = read_gradings(args.metadata / "radiological_gradings.csv")
    functions = {name: fn for name, (_, _, fn) in candidates.items()}
    results = []
    by_source = {source: rows_for(args.cache, gradings, source, functions) for source in SOURCES}
    for name, (target, sign, _) in candidates.items():
        line = [name]
        for source in SOURCES:
            if target == "pfirrmann":
                statistic = spearman_of(name, "pfirrmann")
            else:
                statistic = auroc_of(name, target, -1.0 if sign == "lower" else 1.0)
            rows = by_source[source]
            kept = [r for r in rows if r.get(name) is not None]
            value = statistic(rows)
            low, high = bootstrap_interval(rows, statistic, resamples=args.bootstrap, seed=0)
            line.append(f"{value:.3f} [{low:.3f}, {high:.3f}] ({len(kept)})")
            results.append({"candidate": name, "target": target, "source": source, "value": round(value, 4),
                            "ci_low": round(low, 4), "ci_high": round(high, 4), "discs": len(kept)})
        print(" | ".join(line), flush=True)
    if args.out:
        with args.out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(results[0]))
            writer.writeheader()
            writer.writerows(results)


def _field(kind: str, key: str) -> Candidate:
    def candidate(context: dict[str, Any]) -> dict[int, float | None]:
        entries = context["report"].discs if kind == "disc" else context["report"].vertebrae
        return {e["rank"]: e[key] for e in entries if e["rank"] is not None}
    return candidate


def _discs(context: dict[str, Any]) -> list[tuple[int, np.ndarray, Any, np.ndarray]]:
    """``(rank, mask, frame, points)`` of every named disc of the central slice."""
    scan, levels = context["scan"], context["report"].levels
    out = []
    for disc in levels.discs:
        if disc.rank is not None:
            mask = levels.mask(disc)
            out.append((disc.rank, mask, m.disc_frame(scan, levels, disc), scan.points_mm(mask)))
    return out


def _signal(quantile: float | None, *, clean: bool, local: bool) -> Candidate:
    def candidate(context: dict[str, Any]) -> dict[int, float | None]:
        scan = context["scan"]
        if not m.is_t2_like(scan):
            return {}
        out = {}
        for rank, mask, frame, points in _discs(context):
            nucleus = nucleus_intensity(scan, mask, frame, quantile=quantile)
            csf = csf_intensity(scan, points, frame, clean=clean, local=local)
            out[rank] = nucleus / csf if nucleus is not None and csf else None
        return out
    return candidate


def _mean_over_neighbours(context: dict[str, Any], central: dict[int, float | None], places: dict[int, np.ndarray],
                          side: int, neighbour_values: Callable[[SagittalSlice], Any]) -> dict[int, float | None]:
    """Per rank: the central slice's value (``central``) averaged with those of the slices up to ``side`` either
    side. ``neighbour_values(slice)`` gives ``(centroid_mm, value)`` per level found there; a level counts for
    the central level of ``places`` (rank -> centroid) whose centroid is within ``SAME_DISC_MM``."""
    scan = context["scan"]
    values = {rank: [v] for rank, v in central.items() if v is not None}
    for other in context["slices"]:
        if other.index == scan.index or abs(other.index - scan.index) > side:
            continue
        for centroid, value in neighbour_values(other):
            near = [r for r, c in places.items() if np.hypot(*(np.array(centroid) - c)) <= SAME_DISC_MM]
            if value is not None and near and near[0] in values:
                values[near[0]].append(value)
    return {rank: float(np.mean(v)) for rank, v in values.items()}


def _signal_over_slices(quantile: float | None, *, clean: bool, local: bool, side: int = 1) -> Candidate:
    """The ratio averaged over the central slice and its ``side`` neighbours either side, discs matched by
    centroid (within 10 mm) to the central slice's named discs."""
    from spinesegdiff.anatomy import identify_levels

    central = _signal(quantile, clean=clean, local=local)

    def ratios(other: SagittalSlice) -> list[tuple[Any, float | None]]:
        if not m.is_t2_like(other):
            return []
        levels, out = identify_levels(other), []
        for disc in levels.discs:
            mask = levels.mask(disc)
            frame = m.disc_frame(other, levels, disc)
            nucleus = nucleus_intensity(other, mask, frame, quantile=quantile)
            csf = csf_intensity(other, other.points_mm(mask), frame, clean=clean, local=local)
            out.append((disc.centroid_mm, nucleus / csf if nucleus is not None and csf else None))
        return out

    def candidate(context: dict[str, Any]) -> dict[int, float | None]:
        places = {d.rank: np.array(d.centroid_mm) for d in context["report"].levels.discs if d.rank is not None}
        return _mean_over_neighbours(context, central(context), places, side, ratios)
    return candidate


def _field_over_slices(kind: str, key: str, side: int = 1) -> Candidate:
    """A reported measure (``kind`` ``disc`` or ``vertebra``, field ``key``) averaged over the central slice and
    its ``side`` neighbours either side: each neighbour is measured on its own (:func:`measure_levels`), and its
    levels are matched to the central slice's by centroid (within 10 mm). One slice's measure carries the
    slice's partial volume and where it happens to cut the disc or body; their mean over 3 mm carries less."""
    central = _field(kind, key)

    def measured(other: SagittalSlice) -> list[tuple[Any, float | None]]:
        report = measure_levels(other)
        by_rank = {e["rank"]: e[key] for e in (report.discs if kind == "disc" else report.vertebrae)
                   if e["rank"] is not None}
        others = report.levels.discs if kind == "disc" else report.levels.vertebrae
        return [(element.centroid_mm, by_rank.get(element.rank)) for element in others]

    def candidate(context: dict[str, Any]) -> dict[int, float | None]:
        levels = context["report"].levels
        elements = levels.discs if kind == "disc" else levels.vertebrae
        places = {e.rank: np.array(e.centroid_mm) for e in elements if e.rank is not None}
        return _mean_over_neighbours(context, central(context), places, side, measured)
    return candidate


def _brightest(context: dict[str, Any]) -> dict[int, float | None]:
    scan = context["scan"]
    if not m.is_t2_like(scan):
        return {}
    nuclei = {rank: nucleus_intensity(scan, mask, frame) for rank, mask, frame, _ in _discs(context)}
    top = max((v for v in nuclei.values() if v is not None), default=None)
    return {rank: v / top if v is not None and top else None for rank, v in nuclei.items()}


def _annulus(context: dict[str, Any]) -> dict[int, float | None]:
    scan = context["scan"]
    if not m.is_t2_like(scan):
        return {}
    out = {}
    for rank, mask, frame, _ in _discs(context):
        nucleus = nucleus_intensity(scan, mask, frame)
        ring = scan.image[annulus_mask(scan, mask, frame)]
        out[rank] = nucleus / float(np.median(ring)) if nucleus is not None and ring.size else None
    return out


def _neighbour_discs(context: dict[str, Any]) -> dict[int, float | None]:
    return neighbour_height_ratio(context["report"].discs)


def _body_heights(context: dict[str, Any]) -> dict[int, float | None]:
    return {v["rank"]: v["height_mm"] for v in context["report"].vertebrae if v["rank"] is not None}


def _over_depth(context: dict[str, Any]) -> dict[int, float | None]:
    scan, levels = context["scan"], context["report"].levels
    heights = {d["rank"]: d["height_mm"] for d in context["report"].discs if d["rank"] is not None}
    out = {}
    for rank, _, frame, _ in _discs(context):
        depths = []
        for r in (rank, rank - 1):
            body = levels.by_rank("vertebra", r)
            if body is not None and not body.partial:
                depths.append(m.body_depth_mm(scan.points_mm(levels.body(body)), frame, scan))
        depths = [d for d in depths if d]
        out[rank] = heights.get(rank) / float(np.mean(depths)) if depths and heights.get(rank) else None
    return out


def _posterior_index(context: dict[str, Any]) -> dict[int, float | None]:
    bodies = _body_heights(context)
    out = {}
    for d in context["report"].discs:
        if d["rank"] is None or not d["heights_mm"]:
            continue
        near = [bodies.get(r) for r in (d["rank"], d["rank"] - 1)]
        near = [h for h in near if h]
        out[d["rank"]] = d["heights_mm"]["posterior"] / float(np.mean(near)) if near else None
    return out


def _literature_index(*, lumbar_only: bool, key: str = "height_index") -> Candidate:
    def candidate(context: dict[str, Any]) -> dict[int, float | None]:
        out = {}
        for d in context["report"].discs:
            rank = d["rank"]
            if rank is None or d[key] is None or (lumbar_only and rank > 5):
                continue
            out[rank] = d[key] / m.level_factor(rank)
        return out
    return candidate


def _lumbar(key: str) -> Candidate:
    def candidate(context: dict[str, Any]) -> dict[int, float | None]:
        return {d["rank"]: d[key] for d in context["report"].discs if d["rank"] is not None and d["rank"] <= 5}
    return candidate


def _composite(context: dict[str, Any]) -> dict[int, float | None]:
    signal = _signal(NUCLEUS_QUANTILE, clean=True, local=True)(context)
    height = _literature_index(lumbar_only=False)(context)
    return {r: signal[r] * height[r] for r in signal if signal[r] is not None and height.get(r) is not None}


def _slip_above(context: dict[str, Any]) -> dict[int, float | None]:
    return {v["rank"]: v["slip_mm"] for v in context["report"].vertebrae if v["rank"] is not None}


def _wall_slip(kind: str) -> Candidate:
    """Per disc rank, the slip of the vertebra above over the one below by the wall lines (``wall``) or the
    Meyerding corner (``corner``); over the unlabelled sacrum the report's slip (the disc-surface proxy)."""
    def candidate(context: dict[str, Any]) -> dict[int, float | None]:
        scan, levels = context["scan"], context["report"].levels
        reported = _slip_above(context)
        out = {}
        for rank, _, frame, _ in _discs(context):
            upper, lower = levels.by_rank("vertebra", rank), levels.by_rank("vertebra", rank - 1)
            if upper is None or upper.partial:
                continue
            if lower is None:
                out[rank] = reported.get(rank)
                continue
            upper_points = scan.points_mm(levels.body(upper))
            lower_points = scan.points_mm(levels.body(lower))
            if kind == "wall":
                out[rank] = wall_slip(upper_points, lower_points, frame)
            else:
                out[rank] = corner_slip(m.endplate_band(upper_points, frame, lower=True), lower_points, frame)
        return out
    return candidate


CANDIDATES: dict[str, tuple[str, str, Candidate]] = {
    "N0 height_index (current)": ("narrowing", "lower", _field("disc", "height_index")),
    "    height_mm (current secondary)": ("narrowing", "lower", _field("disc", "height_mm")),
    "N1 height / adjacent discs' mean height": ("narrowing", "lower", _neighbour_discs),
    "N2 height / adjacent bodies' AP depth": ("narrowing", "lower", _over_depth),
    "N3 posterior height / adjacent body heights": ("narrowing", "lower", _posterior_index),
    "N4a height_index / literature level normal": ("narrowing", "lower", _literature_index(lumbar_only=False)),
    "N4b same, L1-L2..L5-S1 only": ("narrowing", "lower", _literature_index(lumbar_only=True)),
    "    N0 on L1-L2..L5-S1 only": ("narrowing", "lower", _lumbar("height_index")),
    "N4c N2 / literature level normal": ("narrowing", "lower", lambda c: m.depth_indices(
        c["scan"], c["report"].levels, {d["rank"]: d["height_mm"] for d in c["report"].discs})),
    "S0 signal_ratio (current)": ("pfirrmann", "", _field("disc", "signal_ratio")),
    "S1 nucleus p90 / CSF (current)": ("pfirrmann", "", _signal(90.0, clean=False, local=True)),
    "S2a nucleus mean / local clean CSF": ("pfirrmann", "", _signal(None, clean=True, local=True)),
    "S2b nucleus mean / canal clean CSF": ("pfirrmann", "", _signal(None, clean=True, local=False)),
    "S3a nucleus p90 / local clean CSF": ("pfirrmann", "", _signal(90.0, clean=True, local=True)),
    "S3b nucleus p90 / canal clean CSF": ("pfirrmann", "", _signal(90.0, clean=True, local=False)),
    "S4 S3a over 3 slices": ("pfirrmann", "", _signal_over_slices(90.0, clean=True, local=True)),
    "S5 nucleus p90 / patient's brightest": ("pfirrmann", "", _brightest),
    "S6 nucleus p90 / annulus median": ("pfirrmann", "", _annulus),
    "S7 S3a x N4a": ("pfirrmann", "", _composite),
    "    S0 recomputed from the parts": ("pfirrmann", "", _signal(None, clean=False, local=True)),
    "S4b S0 over 3 slices (post hoc)": ("pfirrmann", "", _signal_over_slices(None, clean=False, local=True)),
    "P0 slip_mm (current)": ("spondylolisthesis", "higher", _slip_above),
    # third round (2026-11-29, session 11): the reported measures averaged over the central 3 mm, as S4b did
    # for the signal ratio
    "N5 depth_index over 3 slices": ("narrowing", "lower", _field_over_slices("disc", "depth_index")),
    "P4 slip_mm over 3 slices": ("spondylolisthesis", "higher", _field_over_slices("vertebra", "slip_mm")),
    "P1 posterior wall lines at the disc": ("spondylolisthesis", "higher", _wall_slip("wall")),
    "P2 Meyerding corner over the lower wall": ("spondylolisthesis", "higher", _wall_slip("corner")),
}

if __name__ == "__main__":
    main(CANDIDATES)
