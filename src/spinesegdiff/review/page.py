"""The review page: one HTML file with the cases' table, the viewer, the legend, and the case data as JSON.

The page is filled from the template ``assets/review.html``; its style (``review.css``) and script (``review.js``,
plain JavaScript, no library) are inlined, and the case data embedded as JSON, so it opens from disk with no
server and no network. The only files it loads are each case's layers, by relative links
(:mod:`spinesegdiff.review.layers`). Every table row carries ``data-case="<stem>"`` and
``data-uncertainty="<mean uncertainty>"`` (empty when unknown), in the order of
:func:`~spinesegdiff.review.cases.most_doubtful_first`.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from spinesegdiff import __version__
from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS, STRUCTURE_NAMES
from spinesegdiff.review.cases import BY_SCORE, CaseRecord
from spinesegdiff.review.decisions import DECISIONS, EXPORT_COLUMNS
from spinesegdiff.review.layers import CaseLayers
from spinesegdiff.review.palette import legend

ASSETS = Path(__file__).resolve().parent / "assets"
GENERATOR = "spinesegdiff review"
"""The page's ``<meta name="generator">``: a ``review.html`` without it is not replaced."""
_MARKER = re.compile(r"\{\{([A-Z_]+)\}\}")


@dataclass(frozen=True)
class PageCase:
    """A case as the page shows it: its record, its layers (``None``: nothing to draw), flags found while drawing,
    and its place in the triage order (1 = most doubtful)."""

    record: CaseRecord
    layers: CaseLayers | None
    flags: tuple[str, ...]
    rank: int

    @property
    def all_flags(self) -> tuple[str, ...]:
        return (*self.record.flags, *self.flags)


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _measure_cell(entry: dict[str, Any]) -> tuple[str, str]:
    """(sort value, shown text) of a structure's area or volume."""
    if entry.get("area_mm2") is not None:
        return repr(entry["area_mm2"]), f"{entry['area_mm2']:,.0f} mm²"
    if entry.get("volume_mm3") is not None:
        return repr(entry["volume_mm3"]), f"{entry['volume_mm3']:,.0f} mm³"
    return "", "–"


def _number_attribute(value: float | None) -> str:
    return "" if value is None else repr(round(value, 6))


def _flags_html(flags: tuple[str, ...]) -> str:
    return "".join(f'<span class="flag">{_text(flag)}</span>' for flag in flags)


def _row(case: PageCase, folder: Path, show_score: bool) -> str:
    record = case.record
    thumbnail = "–"
    if case.layers is not None:
        width, height = case.layers.thumbnail
        source = _text(f"{layer_url(case.layers.folder, folder)}/thumbnail.png")
        thumbnail = (f'<img class="thumb" loading="lazy" decoding="async" src="{source}" width="{width}" '
                     f'height="{height}" alt="{_text(record.case)}, slice {case.layers.initial}">')
    cells = [f'<td class="rank">{case.rank}</td>', f'<td class="thumb-cell">{thumbnail}</td>',
             f'<th scope="row" class="case"><button type="button" class="open">{_text(record.case)}</button>'
             f'<div class="flags">{_flags_html(case.all_flags)}</div></th>',
             f'<td class="verdict verdict-{_text(record.verdict)}">{_text(record.verdict)}</td>']
    if show_score:
        score = record.quality_score
        cells.append(f'<td class="number" data-key="score" data-value="{_number_attribute(score)}">'
                     f'{"–" if score is None else f"{score:.3f}"}</td>')
    mean = record.uncertainty_mean
    cells.append(f'<td class="number" data-key="uncertainty" data-value="{_number_attribute(mean)}">'
                 f'{"–" if mean is None else f"{mean:.4f}"}</td>')
    for abbreviation in STRUCTURE_ABBREVIATIONS:
        value, shown = _measure_cell(record.structures[abbreviation])
        cells.append(f'<td class="number" data-key="{abbreviation}" data-value="{value}">{shown}</td>')
    cells.append('<td class="decision" data-key="decision" data-value="">–</td>')
    return (f'<tr data-case="{_text(record.case)}" data-uncertainty="{_number_attribute(mean)}" '
            f'data-score="{_number_attribute(record.quality_score)}" data-rank="{case.rank}">{"".join(cells)}</tr>')


def _header(show_score: bool) -> str:
    columns = [("rank", "#", "place in the triage order (1: most doubtful)"), (None, "Slice", ""),
               ("case", "Case", ""), ("verdict", "Check", "the quality check of predict: ok or doubtful")]
    columns += [("score", "Score", "quality score (higher is better)")] if show_score else []
    columns += [("uncertainty", "Uncertainty", "mean uncertainty over the segmented slices")]
    columns += [(a, a, f"{n}: area (mm²) or volume (mm³)")
                for a, n in zip(STRUCTURE_ABBREVIATIONS, STRUCTURE_NAMES, strict=True)]
    columns += [("decision", "Decision", "")]
    cells = []
    for key, title, explained in columns:
        hint = f' title="{_text(explained)}"' if explained else ""
        if key is None:
            cells.append(f'<th scope="col"{hint}>{_text(title)}</th>')
        else:
            sort = ' aria-sort="ascending"' if key == "rank" else ""
            cells.append(f'<th scope="col" data-sort="{key}"{sort}{hint}><button type="button">{_text(title)}</button>'
                         '</th>')
    return f"<tr>{''.join(cells)}</tr>"


def layer_url(layer_folder: Path, page_folder: Path) -> str:
    """The relative, percent-encoded link from the page's folder to a case's layer folder."""
    return "/".join(quote(part) for part in layer_folder.relative_to(page_folder).parts)


def case_data(case: PageCase, folder: Path) -> dict[str, Any]:
    """What the page's script knows of a case (embedded as JSON)."""
    record, layers = case.record, case.layers
    shown = None
    if layers is not None:
        shown = {"dir": layer_url(layers.folder, folder), "slices": list(layers.slices), "initial": layers.initial,
                 "rows": layers.rows, "cols": layers.cols, "widthMm": round(layers.width_mm, 3),
                 "heightMm": round(layers.height_mm, 3), "image": layers.image}
    return {"id": record.case, "rank": case.rank, "path": record.export_path, "input": record.input,
            "mode": record.mode, "verdict": record.verdict, "score": record.quality_score,
            "uncertainty": record.uncertainty_mean, "reasons": list(record.reasons), "flags": list(case.all_flags),
            "structures": record.structures, "measures": record.measures, "discs": list(record.discs),
            "vertebrae": list(record.vertebrae), "levels": record.levels, "series": record.series_label,
            "layers": shown}


def _legend_html(palette: dict[str, Any]) -> str:
    swatches = "".join(
        f'<li><span class="swatch" style="background:{s["colour"]}"></span>{_text(s["name"])} '
        f'({_text(s["colour_name"])})</li>' for s in palette["structures"])
    gradient = ", ".join(palette["uncertainty_stops"])
    return (f'<div class="legend-line"><span class="legend-title">Labels, {_text(palette["palette"])} palette '
            f'(colour-blind safe):</span><ul class="swatches">{swatches}</ul></div>'
            f'<div class="legend-line"><span class="legend-title">Uncertainty, {_text(palette["uncertainty_map"])} '
            f'map:</span><span>0</span><span class="gradient" role="img" '
            f'style="background:linear-gradient(to right, {gradient})" aria-label="{_text(palette["uncertainty_map"])}'
            f' colour scale from 0 (dark blue) to 1 (yellow)"></span><span>1</span>'
            f'<span>(transparent at 0, opaque from {palette["opaque_at"]:g})</span></div>')


def _summary(cases: list[PageCase], measure: str) -> str:
    order = "lowest first" if measure == BY_SCORE else "highest first"
    failed = sum(c.record.failed for c in cases)
    extra = f", {failed} failed scan{'s' if failed != 1 else ''} first" if failed else ""
    return (f"{len(cases)} case{'s' if len(cases) != 1 else ''}, most doubtful first: by {_text(measure)} "
            f"({order}){extra}.")


def _footer(cases: list[PageCase], folder: Path, generated: str) -> str:
    citations = sorted({c.record.citation for c in cases if c.record.citation})
    cited = "".join(f"<p>Data: {_text(c)}</p>" for c in citations)
    return (f"<p>Made by spinesegdiff {_text(__version__)} on {_text(generated)} from the results in "
            f"<code>{_text(folder.resolve())}</code>.</p>{cited}")


def _json_for_script(data: Any) -> str:
    """JSON that can sit inside ``<script type="application/json">`` (no ``</script>`` or ``<!--``)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render_page(folder: Path, cases: list[PageCase], *, measure: str) -> str:
    """The page's HTML for the cases of ``folder`` (the page's own folder), in triage order."""
    folder = Path(folder)
    show_score = any(c.record.quality_score is not None for c in cases)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    palette = legend()
    data = {"storageKey": str(folder.resolve()), "folder": folder.resolve().name, "measure": measure,
            "decisions": list(DECISIONS), "columns": list(EXPORT_COLUMNS),
            "exportName": f"{folder.resolve().name or 'results'}-triage.csv", "legend": palette,
            "cases": [case_data(c, folder) for c in cases]}
    script = (ASSETS / "review.js").read_text(encoding="utf-8")
    style = (ASSETS / "review.css").read_text(encoding="utf-8")
    if "</script" in script.lower() or "</style" in style.lower():
        raise RuntimeError("review.js / review.css must not close their own element")
    values = {"TITLE": _text(f"Review: {folder.resolve().name}"), "GENERATOR": GENERATOR, "STYLE": style,
              "SCRIPT": script, "SUMMARY": _summary(cases, measure), "HEADER": _header(show_score),
              "ROWS": "\n".join(_row(c, folder, show_score) for c in cases), "LEGEND": _legend_html(palette),
              "DATA": _json_for_script(data), "FOOTER": _footer(cases, folder, generated)}
    template = (ASSETS / "review.html").read_text(encoding="utf-8")
    return _MARKER.sub(lambda match: values[match.group(1)], template)
