"""The per-level spine report of a segmented slice: the ``discs`` and ``vertebrae`` lists of ``<stem>.json``.

::

    from spinesegdiff.anatomy import measure_levels, scan_slice
    report = measure_levels(scan_slice(labels_zyx, grid, grid.central_index, image_zyx=image))
    report.to_dict()   # {"levels": {...}, "discs": [...], "vertebrae": [...]}, strict-JSON ready (None, no NaN)

Lists run top to bottom. A disc: ``level`` ("L4-L5"), ``rank`` (1 = L5-S1, SPIDER's ``IVD label``),
``partial``, ``height_mm`` (mean of ``heights_mm`` anterior/middle/posterior), ``height_index``,
``signal_ratio``, ``canal_ap_mm``, ``uncertainty``. A vertebra: ``level``, ``rank`` (0 = S1), ``partial``,
``height_mm``, ``heights_mm``, ``slip_mm``, ``slip_percent``, ``slip_against``, ``uncertainty``. What each
measure means and how its uncertainty is taken: :mod:`spinesegdiff.anatomy.measures`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from spinesegdiff.anatomy import measures as m
from spinesegdiff.anatomy.instances import Level, SpineLevels, identify_levels
from spinesegdiff.anatomy.sagittal import Frame, SagittalSlice, mid_sagittal_index, scan_slice
from spinesegdiff.data.preprocess import SagittalGrid, slices_to_volume

if TYPE_CHECKING:  # Pillow is imported where the names are drawn
    from PIL import ImageDraw


def _with_after(entry: dict[str, Any], key: str, new_key: str, value: Any) -> dict[str, Any]:
    """``entry`` with ``new_key: value`` placed right after ``key`` (the JSON reads in that order)."""
    out: dict[str, Any] = {}
    for name, item in entry.items():
        out[name] = item
        if name == key:
            out[new_key] = value
    return out


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), digits)


def _rounded_span(values: list[float | None], digits: int = 2) -> list[float] | None:
    found = m.span(values)
    return None if found is None else [round(v, digits) for v in found]


@dataclass(frozen=True)
class LevelReport:
    """Named levels of one slice and their measurements (see the module docstring for the fields)."""

    levels: SpineLevels
    discs: list[dict[str, Any]]
    vertebrae: list[dict[str, Any]]
    note: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"levels": self.note, "discs": self.discs, "vertebrae": self.vertebrae}


def _mean_height(points: np.ndarray, frame: Frame, scan: SagittalSlice) -> tuple[float | None, tuple | None]:
    heights = m.heights_in_frame(points, frame, scan)
    return (None, None) if heights is None else (float(np.mean(heights)), heights)


def _named_heights(heights: tuple | None) -> dict[str, float | None] | None:
    if heights is None:
        return None
    return {k: _round(v) for k, v in zip(("anterior", "middle", "posterior"), heights, strict=True)}


def _vertebra_entry(scan: SagittalSlice, levels: SpineLevels, variants: m.Variants, vertebra: Level,
                    frames: dict[int, Frame]) -> dict[str, Any]:
    """Height (and its span) of a body in its discs' frame, and its slip over the level below."""
    rank = vertebra.rank
    neighbours = [frames[d.label] for d in levels.discs if rank is not None and d.rank in (rank, rank + 1)]
    frame = m.body_frame(scan, levels.body(vertebra), neighbours)
    spans = [_mean_height(scan.points_mm(v(levels.body(vertebra))), frame, scan)[0] for v in variants.all()]
    height, heights = _mean_height(scan.points_mm(levels.body(vertebra)), frame, scan)
    below = levels.by_rank("disc", rank) if rank is not None else None
    slips: list[tuple[float, float] | None] = []
    against = None
    if below is not None and not vertebra.partial:
        lower = levels.by_rank("vertebra", rank - 1)
        against = lower.name if lower is not None else f"{below.name} disc (lower vertebra not labelled)"
        disc_frame = frames[below.label]
        for v in variants.all():
            upper_band = m.endplate_band(scan.points_mm(v(levels.body(vertebra))), disc_frame, lower=True)
            lower_band = (m.endplate_band(scan.points_mm(v(levels.body(lower))), disc_frame, lower=False)
                          if lower is not None else
                          m.endplate_band(scan.points_mm(v(levels.mask(below))), disc_frame, lower=True,
                                          band_mm=m.DISC_SURFACE_MM))
            slips.append(m.slip(upper_band, lower_band, disc_frame))
    nominal = slips[0] if slips else None
    return {
        "level": vertebra.name, "rank": rank, "partial": vertebra.partial,
        "height_mm": None if vertebra.partial else _round(height),
        "heights_mm": None if vertebra.partial else _named_heights(heights),
        "slip_mm": _round(nominal[0]) if nominal else None,
        "slip_percent": _round(nominal[1], 1) if nominal else None,
        "slip_against": against if nominal else None,
        "uncertainty": {
            "boundary_entropy": _round(variants.edge_entropy(levels.body(vertebra)), 4),
            "height_mm": None if vertebra.partial else _rounded_span(spans),
            "slip_mm": _rounded_span([s[0] if s else None for s in slips]),
        },
    }


def _disc_entry(scan: SagittalSlice, levels: SpineLevels, variants: m.Variants, disc: Level, frame: Frame,
                body_heights: dict[int, float | None], t2_like: bool | None) -> dict[str, Any]:
    """Height, height index, canal diameter and signal ratio of one disc, with their spans."""
    mask = levels.mask(disc)
    points = scan.points_mm(mask)
    height, heights = _mean_height(points, frame, scan)
    spans = [_mean_height(scan.points_mm(v(mask)), frame, scan)[0] for v in variants.all()]
    canal = [m.canal_ap_mm(v(scan.canal), points, frame, scan)[0] for v in variants.all()]
    adjacent = [body_heights.get(r) for r in ((disc.rank, disc.rank - 1) if disc.rank is not None else ())]
    adjacent = [h for h in adjacent if h is not None]
    index = height / float(np.mean(adjacent)) if adjacent and height is not None and not disc.partial else None
    ratio = m.signal_ratio(scan, mask, frame, points) if t2_like else None
    return {
        "level": disc.name, "rank": disc.rank, "partial": disc.partial,
        "height_mm": None if disc.partial else _round(height),
        "heights_mm": None if disc.partial else _named_heights(heights),
        "height_index": _round(index, 3),
        "signal_ratio": _round(ratio, 3),
        "canal_ap_mm": _round(canal[0]),
        "uncertainty": {
            "boundary_entropy": _round(variants.edge_entropy(mask), 4),
            "height_mm": None if disc.partial else _rounded_span(spans),
            "canal_ap_mm": _rounded_span(canal),
        },
    }


def measure_levels(scan: SagittalSlice) -> LevelReport:
    """Name the slice's levels (:func:`~spinesegdiff.anatomy.instances.identify_levels`) and measure each."""
    levels = identify_levels(scan)
    variants = m.Variants(scan)
    frames = {d.label: m.disc_frame(scan, levels, d) for d in levels.discs}
    vertebrae = [_vertebra_entry(scan, levels, variants, v, frames) for v in levels.vertebrae]
    body_heights = {v.rank: e["height_mm"] for v, e in zip(levels.vertebrae, vertebrae, strict=True)
                    if v.rank is not None}
    t2_like = m.is_t2_like(scan)
    discs = [_disc_entry(scan, levels, variants, d, frames[d.label], body_heights, t2_like) for d in levels.discs]
    depth = m.depth_indices(scan, levels, {d["rank"]: d["height_mm"] for d in discs if d["rank"] is not None})
    discs = [_with_after(disc, "height_index", "depth_index", _round(depth.get(disc["rank"]), 3)) for disc in discs]
    note = {
        "named_from": levels.named_from,
        "doubtful": levels.doubtful,
        "reason": "; ".join(levels.reasons) if levels.reasons else None,
        "slice": scan.index,
        "contrast": m.CONTRASTS[t2_like] + (" (no signal ratio)" if t2_like is False else ""),
    }
    return LevelReport(levels=levels, discs=discs, vertebrae=vertebrae, note=note)


def scan_levels(labels_zyx: np.ndarray, grid: SagittalGrid, indices: Sequence[int], *,
                image_zyx: np.ndarray | None = None, uncertainty_zyx: np.ndarray | None = None) -> LevelReport:
    """The level report of a segmented scan on its mid-sagittal segmented slice (``--volume`` included)."""
    index = mid_sagittal_index(indices, grid)
    return measure_levels(scan_slice(labels_zyx, grid, index, image_zyx=image_zyx,
                                     uncertainty_zyx=uncertainty_zyx))


def label_positions(report: LevelReport, scan_shape: tuple[int, int], row_mm: float,
                    col_mm: float) -> list[tuple[float, float, str, str]]:
    """Where to write each level's name on the slice: ``(row_px, col_px, name, kind)``, the column a little in
    front of the level's anterior edge (vertebrae further out than discs), clipped to the image."""
    placed = []
    for level in report.levels.levels:
        if level.name is None:
            continue
        mask = report.levels.body(level) if level.kind == "vertebra" else report.levels.mask(level)
        cols = np.nonzero(mask)[1]
        front = cols.min() if cols.size else level.centroid_mm[1] / col_mm
        gap_mm = 14.0 if level.kind == "vertebra" else 4.0
        col = max(2.0, front - gap_mm / col_mm)
        row = min(max(level.centroid_mm[0] / row_mm, 0.0), scan_shape[0] - 1.0)
        placed.append((row, col, level.name, level.kind))
    return placed


def spider_labels(labels_zyx: np.ndarray, grid: SagittalGrid, indices: Sequence[int]) -> np.ndarray:
    """SPIDER-style instance codes on the scan's grid (``uint16``, ``(z, y, x)``), each segmented slice named on
    its own: canal 100, vertebrae counted from L5 = 1 (partly visible ones ``100 +``), discs from L5-S1 = 201.

    The sacrum (S1), which SPIDER does not label, and levels that cannot be named are 0; slices not segmented
    are 0. Naming each slice on its own may differ between far-lateral slices of a ``--volume`` run.
    """
    views = []
    for index in indices:
        scan = scan_slice(labels_zyx, grid, index)
        views.append(identify_levels(scan).spider_map(scan.labels))
    return slices_to_volume(np.stack(views), list(indices), grid)


LEVEL_NAME_STYLE = {"vertebra": {"size": 11, "fill": (255, 255, 255, 255)},
                    "disc": {"size": 9, "fill": (255, 201, 203, 255)}}
"""How :func:`draw_level_names` writes a name: pixel size and RGBA colour, vertebrae white, discs pink and smaller."""
NAME_BOX = (0, 0, 0, 115)
"""The box behind each name: black at 45 % opacity."""
DOUBTFUL_NOTE = "level count doubtful (see JSON)"


def draw_level_names(draw: ImageDraw.ImageDraw, report: LevelReport, row_mm: float, col_mm: float, *,
                     to_canvas: Callable[[float, float], tuple[float, float]],
                     corner: tuple[float, float]) -> list[tuple[float, float, str]]:
    """Write each named level in front of the spine on a Pillow drawing of the slice; a doubtful count is said at
    ``corner``.

    Args:
        draw: a ``PIL.ImageDraw.ImageDraw`` made with mode ``"RGBA"`` (so the boxes are see-through).
        report: the slice's levels; ``row_mm``, ``col_mm``: its pixel spacing.
        to_canvas: ``(row, col)`` of a slice pixel (rows down, columns right, pixel centres at whole numbers)
            -> ``(x, y)`` on the canvas.
        corner: ``(x, y)`` on the canvas of the note "level count doubtful" (its top-left), when the count is.

    Returns:
        ``(x, y, name)`` of each name written: the middle of its right end on the canvas, in front of the level
        (:func:`label_positions`); vertebrae white, discs pink and smaller (:data:`LEVEL_NAME_STYLE`), each on
        a dark box.
    """
    from spinesegdiff.drawing import draw_text

    shape = report.levels.instance_map.shape
    written = []
    for row, col, name, kind in label_positions(report, shape, row_mm, col_mm):
        x, y = to_canvas(row, col)
        draw_text(draw, (x, y), name, anchor="rm", box=NAME_BOX, pad=1, **LEVEL_NAME_STYLE[kind])
        written.append((x, y, name))
    if report.note["doubtful"]:
        draw_text(draw, corner, DOUBTFUL_NOTE, size=11, fill=(255, 165, 0, 255), anchor="lt")
    return written


def _cell(value: Any, unit: str = "", span: list[float] | None = None) -> str:
    if value is None:
        return "&ndash;"
    text = f"{value:g}{unit}"
    return text if not span or span[0] == span[1] else f"{text} <small>({span[0]:g}&ndash;{span[1]:g})</small>"


def level_table_html(report: Mapping[str, Any]) -> str:
    """The levels of a ``<stem>.json`` report as one HTML table, top to bottom (vertebrae and discs
    alternating, with the uncertainty ranges in small print), headed by the naming note; ``""`` when the report
    has no levels. For the review page and any other viewer of the reports."""
    from html import escape

    discs, vertebrae = report.get("discs") or [], report.get("vertebrae") or []
    if not discs and not vertebrae:
        return ""
    rows = [(2 * v["rank"] if v.get("rank") is not None else -1, "vertebra", v) for v in vertebrae]
    rows += [(2 * d["rank"] - 1 if d.get("rank") is not None else -1, "disc", d) for d in discs]
    rows.sort(key=lambda row: -row[0])
    note = report.get("levels") or {}
    head = (f"<p>Levels named from the {escape(str(note.get('named_from', '?')))}"
            + (f"; <strong>doubtful</strong>: {escape(str(note.get('reason')))}" if note.get("doubtful") else "")
            + "</p>")
    lines = [head, "<table class=\"levels\"><tr><th>level</th><th>height (mm)</th><th>height index</th>"
                   "<th>signal ratio</th><th>canal AP (mm)</th><th>slip (mm, %)</th></tr>"]
    for _, kind, entry in rows:
        spans = entry.get("uncertainty") or {}
        name = escape(str(entry.get("level") or "unnamed")) + (" (partial)" if entry.get("partial") else "")
        slip = "" if kind == "disc" else _cell(entry.get("slip_mm"), "", spans.get("slip_mm")) + (
            f", {entry['slip_percent']:g} %" if entry.get("slip_percent") is not None else "")
        height = _cell(entry.get("height_mm"), "", spans.get("height_mm"))
        lines.append(f"<tr class=\"{kind}\"><td>{name}</td><td>{height}"
                     f"</td><td>{_cell(entry.get('height_index'))}</td><td>{_cell(entry.get('signal_ratio'))}</td>"
                     f"<td>{_cell(entry.get('canal_ap_mm'), '', spans.get('canal_ap_mm'))}</td><td>{slip}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)
