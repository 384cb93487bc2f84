"""The evaluation report: per-case CSV, tables (Markdown, CSV, LaTeX), pathology statistics, figures, and one
self-contained HTML page that opens offline.

:func:`build_report` takes the prediction sets of the compared systems (the first is the primary system: its
uncertainty and pathology results are the ones analysed) and writes into ``out``::

    cases.csv               one row per system and case: Dice, HD95, ASSD per structure, uncertainty scores
    table1.{md,csv,tex}     Dice per structure, mean +- std, per system (paper Table 1's shape)
    distances.{md,csv,tex}  HD95 and ASSD (mm) per structure
    uncertainty.{md,csv,tex} AUROC, AUPR, UEO, ECE, Brier per system
    table2.{md,csv,tex}     presegmentation ablation (paper Table 2's shape), when ablation files are given
    pathology.{md,csv}      Welch t-tests per pathology and structure, Benjamini-Hochberg q-values
    figures/*.png           Dice box plots, Fig. 2, Fig. 3, uncertainty vs Dice
    report.html             all of the above in one page (images embedded)
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spinesegdiff.data.labels import STRUCTURE_ABBREVIATIONS
from spinesegdiff.evaluation.pathology import pathology_tests, patient_means
from spinesegdiff.evaluation.scoring import score_prediction_set, summarise
from spinesegdiff.evaluation.systems import PredictionSet
from spinesegdiff.files import atomic_write_text

UNCERTAINTY_KEYS = ("auroc", "aupr", "error_rate", "ueo", "ece", "brier", "mean_uncertainty")
CITATION = ("SPIDER data: J. W. van der Graaf et al., Lumbar spine segmentation in MR images: a dataset and a "
            "public benchmark, Scientific Data 11, 264 (2024), CC BY 4.0.")


class Table:
    """A small table that renders as Markdown, CSV and LaTeX."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "") -> None:
        self.header, self.rows, self.caption = list(header), [list(r) for r in rows], caption

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)

    def latex(self) -> str:
        def escape(text: str) -> str:
            return text.replace("_", r"\_").replace("%", r"\%").replace("+-", r"$\pm$").replace("#", r"\#")

        lines = [r"\begin{tabular}{" + "l" * len(self.header) + "}", r"\hline",
                 " & ".join(escape(h) for h in self.header) + r" \\", r"\hline"]
        lines += [" & ".join(escape(c) for c in row) + r" \\" for row in self.rows]
        lines += [r"\hline", r"\end{tabular}"]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def csv_text(self) -> str:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return buffer.getvalue()

    def write(self, folder: Path, stem: str) -> None:
        atomic_write_text(folder / f"{stem}.md", self.markdown() + "\n")
        atomic_write_text(folder / f"{stem}.tex", self.latex() + "\n")
        atomic_write_text(folder / f"{stem}.csv", self.csv_text())


def _mean_std(stats: tuple[float, float, int], digits: int = 3) -> str:
    mean, std, n = stats
    return "n/a" if n == 0 or np.isnan(mean) else f"{mean:.{digits}f} +- {std:.{digits}f}"


def dice_table(rows: list[dict], systems: list[str]) -> Table:
    body = []
    for system in systems:
        chosen = [r for r in rows if r["system"] == system]
        stats = summarise(chosen, [f"dice_{s}" for s in STRUCTURE_ABBREVIATIONS] + ["mDice"])
        body.append([system, *(_mean_std(stats[f"dice_{s}"]) for s in STRUCTURE_ABBREVIATIONS),
                     f"{stats['mDice'][0]:.3f}", str(len(chosen))])
    return Table(["system", "SC", "VB", "IVD", "mDice", "cases"], body,
                 "Dice on held-out central sagittal slices (320 x 320, 1 mm), mean +- std over cases")


def distance_table(rows: list[dict], systems: list[str]) -> Table:
    body = []
    for system in systems:
        chosen = [r for r in rows if r["system"] == system]
        keys = [f"{m}_{s}" for m in ("hd95", "assd") for s in STRUCTURE_ABBREVIATIONS]
        stats = summarise(chosen, keys)
        missing = sum(1 for r in chosen for k in keys if np.isnan(r[k]))
        body.append([system, *(_mean_std(stats[k], 2) for k in keys), str(missing)])
    header = ["system", *(f"{m.upper()} {s} (mm)" for m in ("hd95", "assd") for s in STRUCTURE_ABBREVIATIONS),
              "undefined (one mask empty)"]
    return Table(header, body, "Boundary distances in mm, mean +- std over cases with both masks present")


def uncertainty_table(rows: list[dict], systems: list[str]) -> Table:
    body = []
    for system in systems:
        stats = summarise([r for r in rows if r["system"] == system], list(UNCERTAINTY_KEYS))
        body.append([system, *(_mean_std(stats[k]) for k in UNCERTAINTY_KEYS)])
    header = ["system", "AUROC", "AUPR", "error rate (AUPR of chance)", "UEO", "ECE", "Brier", "mean uncertainty"]
    return Table(header, body, "Uncertainty as an error detector within 5 mm of the structures, and calibration "
                               "of the class probabilities (per case, mean +- std)")


def ablation_table(ablations: Sequence[dict]) -> Table:
    body = []
    for ablation in ablations:
        for row in ablation["rows"]:
            body.append([ablation.get("presegmenter", ""), str(row["t_pre"]), f"{row['network_calls']:g}",
                         *(f"{row[s]['mean']:.3f} +- {row[s]['std']:.3f}" for s in STRUCTURE_ABBREVIATIONS),
                         f"{row['mDice']:.3f}", f"{row['seconds_per_slice']:.2f}"])
    return Table(["presegmenter", "T_pre", "network calls / slice", "SC", "VB", "IVD", "mDice", "s / slice"],
                 body, "Presegmentation ablation: T_pre = 0 is the presegmenter alone, 1000 sampling from noise")


def pathology_table(tests: list[dict]) -> Table:
    body = [[t["pathology"].replace("_", " "), t["structure"], f"{t['n_present']} / {t['n_absent']}",
             f"{t['mean_present']:.3f}", f"{t['mean_absent']:.3f}",
             "n/a" if np.isnan(t["t"]) else f"{t['t']:.2f}", "n/a" if np.isnan(t["p"]) else f"{t['p']:.3f}",
             "n/a" if np.isnan(t["q_bh"]) else f"{t['q_bh']:.3f}", "yes" if t["significant"] else "no"]
            for t in tests]
    return Table(["pathology", "structure", "patients with / without", "Dice with", "Dice without", "Welch t",
                  "p", "q (BH)", "significant at FDR 0.05"], body,
                 "Per-patient Dice with and without each pathology (one value per patient)")


def _choose_cases(rows: list[dict], system: str) -> tuple[list[str], dict[str, str]]:
    chosen = sorted((r for r in rows if r["system"] == system), key=lambda r: r["mDice"])
    if not chosen:
        return [], {}
    picks = {"worst": chosen[0], "median": chosen[len(chosen) // 2], "best": chosen[-1]}
    cases, titles = [], {}
    for label, row in picks.items():
        if row["case"] not in cases:
            cases.append(row["case"])
            titles[row["case"]] = f"{label}: {row['case']} (mDice {row['mDice']:.2f})"
    return cases, titles


def cases_csv(rows: list[dict]) -> str:
    """``cases.csv``: one row per system and case, floats rounded to 4 decimals."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    return buffer.getvalue()


def build_report(predictions: Sequence[PredictionSet], *, images: dict[str, np.ndarray],
                 truth: dict[str, np.ndarray], contrast: dict[str, str], out: Path,
                 flags: dict[str, dict[str, bool]] | None = None, ablations: Sequence[dict] = (),
                 commands: Sequence[str] = (), folds: Sequence[int] = (),
                 title: str = "SpineSegDiff evaluation") -> Path:
    """Score, tabulate, plot and write the report; returns the HTML page's path.

    ``folds`` names the held-out folds the cases come from (recorded in ``summary.json`` and the page).
    """
    from spinesegdiff.evaluation import figures

    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    systems = [p.name for p in predictions]
    primary = predictions[0]
    rows = [row for prediction in predictions for row in score_prediction_set(prediction, truth, contrast)]
    atomic_write_text(out / "cases.csv", cases_csv(rows))
    tables = {"table1": dice_table(rows, systems), "distances": distance_table(rows, systems),
              "uncertainty": uncertainty_table(rows, systems)}
    if ablations:
        tables["table2"] = ablation_table(ablations)
    primary_rows = [r for r in rows if r["system"] == primary.name]
    tests = pathology_tests(primary_rows, flags or {})
    if tests:
        tables["pathology"] = pathology_table(tests)
    for stem, table in tables.items():
        table.write(out, stem)
    timing = Table(["system", "s / slice", "what ran"],
                   [[p.name, f"{p.seconds_per_slice:.2f}", json.dumps(p.description, default=str)[:160]]
                    for p in predictions], "Prediction time per slice on the machine that made the report")
    timing.write(out, "timing")

    figure_paths = {"Dice per system": figures.dice_boxplots(rows, systems, out / "figures" / "dice_boxplots.png")}
    if tests:
        per_patient = {s: patient_means(primary_rows, f"dice_{s}") for s in STRUCTURE_ABBREVIATIONS}
        figure_paths["Figure 2: Dice with and without pathologies"] = figures.pathology_boxplots(
            per_patient, flags or {}, tests, out / "figures" / "pathology_boxplots.png")
    cases, titles = _choose_cases(rows, primary.name)
    index_of = {p.name: {c: i for i, c in enumerate(p.cases)} for p in predictions}
    masks = {p.name: {c: p.labels[index_of[p.name][c]] for c in cases if c in index_of[p.name]} for p in predictions}
    heat = {c: primary.uncertainty[index_of[primary.name][c]].astype(np.float32) for c in cases}
    figure_paths["Figure 3: worst, median and best case"] = figures.qualitative_cases(
        {c: images[c] for c in cases}, {c: truth[c] for c in cases}, masks, heat, cases, titles,
        out / "figures" / "qualitative.png")
    scatter, pearson, spearman = figures.uncertainty_vs_dice(rows, primary.name,
                                                             out / "figures" / "uncertainty_vs_dice.png")
    figure_paths["Case uncertainty against Dice"] = scatter
    summary = {"systems": systems, "primary": primary.name, "num_cases": len(primary.cases),
               "num_patients": len({str(r["patient"]) for r in primary_rows}), "folds": list(folds),
               "uncertainty_dice_correlation": {"pearson": pearson, "spearman": spearman},
               "pathology_rule": "present when graded at any disc level; degeneration: Pfirrmann >= 4",
               "commands": list(commands), "citation": CITATION}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return _write_html(out, title, tables, timing, figure_paths, summary)


def _folds_phrase(folds: Sequence[int]) -> str:
    if not folds:
        return ""
    if len(folds) == 1:
        return f" (test fold {folds[0]})"
    return f" (test folds {', '.join(map(str, folds))}, each predicted by the models of its own fold)"


def _write_html(out: Path, title: str, tables: dict[str, Table], timing: Table, figure_paths: dict[str, Path],
                summary: dict) -> Path:
    sections = [f"<h1>{html.escape(title)}</h1>",
                f"<p>{summary['num_cases']} held-out central sagittal slices of {summary['num_patients']} "
                f"patients{_folds_phrase(summary['folds'])}; primary system "
                f"<b>{html.escape(summary['primary'])}</b>. {html.escape(CITATION)}</p>"]
    names = {"table1": "Table 1: Dice per system", "distances": "Boundary distances",
             "uncertainty": "Uncertainty quality", "table2": "Table 2: presegmentation ablation",
             "pathology": "Pathologies (Welch t-test, Benjamini-Hochberg)"}
    for stem, table in tables.items():
        sections.append(f"<h2>{html.escape(names.get(stem, stem))}</h2>{table.html()}")
    correlation = summary["uncertainty_dice_correlation"]
    sections.append(f"<p>Mean uncertainty of a slice against its mDice ({html.escape(summary['primary'])}): "
                    f"Pearson r = {correlation['pearson']:.2f}, Spearman rho = {correlation['spearman']:.2f}.</p>")
    sections.append(f"<h2>Timing</h2>{timing.html()}")
    for caption, path in figure_paths.items():
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        sections.append(f"<figure><img alt=\"{html.escape(caption)}\" src=\"data:image/png;base64,{encoded}\">"
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if summary["commands"]:
        commands = "\n".join(html.escape(c) for c in summary["commands"])
        sections.append(f"<h2>Commands that made this report</h2><pre>{commands}</pre>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:left}caption{caption-side:bottom;font-size:12px;color:#555}"
             "img{max-width:100%}figcaption{font-size:13px;color:#555}")
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")
    return atomic_write_text(out / "report.html", page)
