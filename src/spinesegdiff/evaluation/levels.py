"""The per-level spine report checked against SPIDER's radiologists, patient by patient.

Each patient's mid-sagittal slice is measured (:func:`spinesegdiff.anatomy.measure_levels`) on its reference
mask (an upper bound: no model) or on the prediction of a model that never saw the patient (5-fold
cross-validation: the built-in U-Net, or SpineSegDiff itself with its multi-sample uncertainty), and compared
with ``radiological_gradings.csv`` (one row per graded disc, ``IVD label`` 1 = L5-S1 upward; a few patients
also have label 0, a disc below their L5-S1 label):

* **naming**: the number of discs named on the slice against the number of discs graded (and, secondary,
  whether every graded level carries a named disc);
* per disc, matched by level (:func:`compare_patient`: ``IVD label`` k with the disc named at rank k):
  AUROC of the *lower* disc height index for ``Disc narrowing`` (and of the depth index,
  :func:`spinesegdiff.anatomy.measures.depth_index`, the report's ``depth_index``), Spearman's rho of the disc
  signal ratio with the ``Pfirrman grade``, AUROC of the slip of the vertebra above the disc for
  ``Spondylolisthesis``;
* each with a 95 % percentile bootstrap interval, resampling patients (all discs of a drawn patient together).

SPIDER: van der Graaf et al., Scientific Data 11:264 (2024), CC BY 4.0.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from spinesegdiff.anatomy import LevelReport
from spinesegdiff.errors import InputError
from spinesegdiff.evaluation.uncertainty_metrics import auroc

CITATION = ("SPIDER data: J. W. van der Graaf et al., Lumbar spine segmentation in MR images: a dataset and a "
            "public benchmark, Scientific Data 11, 264 (2024), CC BY 4.0.")
GRADING_COLUMNS = ("Patient", "IVD label", "Disc narrowing", "Pfirrman grade", "Spondylolisthesis")
TARGETS = {"height_index_auroc": 0.80, "depth_index_auroc": 0.80, "signal_spearman": -0.60, "slip_auroc": 0.85,
           "naming_agreement": 0.95}
"""The issue's targets: AUROC >= 0.80 (for the reported height index, and for the depth index proposed to replace
it), rho <= -0.60, AUROC >= 0.85, names agreeing on >= 95 % of patients."""


def read_gradings(path: str | Path) -> dict[str, list[dict[str, int]]]:
    """Per patient, the graded discs sorted by ``IVD label`` (bottom up): ``label``, ``narrowing``,
    ``pfirrmann``, ``spondylolisthesis`` (ints).

    Raises:
        InputError: the file is missing, lacks a column, or holds a value that is not a whole number.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as err:
        raise InputError(path, f"cannot read the gradings ({err.strerror or err})") from err
    missing = [c for c in GRADING_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise InputError(path, f"not SPIDER's radiological_gradings.csv (missing {', '.join(missing) or 'rows'})")
    graded: dict[str, list[dict[str, int]]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            graded.setdefault(row["Patient"].strip(), []).append({
                "label": int(row["IVD label"]), "narrowing": int(row["Disc narrowing"]),
                "pfirrmann": int(row["Pfirrman grade"]), "spondylolisthesis": int(row["Spondylolisthesis"])})
        except (TypeError, ValueError) as err:
            raise InputError(path, f"line {line}: a grading is not a whole number ({err})") from err
    return {patient: sorted(discs, key=lambda d: d["label"]) for patient, discs in graded.items()}


@dataclass(frozen=True)
class PatientLevels:
    """One patient's comparison: the naming check and one row per graded disc."""

    naming: dict[str, Any]
    discs: list[dict[str, Any]]


def compare_patient(patient: str, report: LevelReport, graded: Sequence[Mapping[str, int]]) -> PatientLevels:
    """Match the report's named discs to the graded ones by level and gather the measures beside the grades.

    Graded ``IVD label`` ``k`` is the disc of rank ``k`` (L5-S1 = 1); a patient whose labels start at 0 (a disc
    graded below its L5-S1 label: transitional anatomy) has them matched from its lowest label up, so the
    lowest graded disc meets the disc named L5-S1. A graded level with no named disc gets empty measures.
    """
    named = sorted((d for d in report.discs if d["rank"] is not None), key=lambda d: d["rank"])
    vertebra_of = {v["rank"]: v for v in report.vertebrae if v["rank"] is not None}
    naming = {"patient": patient, "graded_discs": len(graded), "named_discs": len(named),
              "agrees": len(named) == len(graded), "all_graded_named": len(named) >= len(graded),
              "doubtful": bool(report.note["doubtful"]), "reason": report.note["reason"]}
    disc_of_rank = {d["rank"]: d for d in named}
    lowest_label = graded[0]["label"] if graded else 1
    rows = []
    for grade in graded:
        disc = disc_of_rank.get(grade["label"] - lowest_label + 1)
        above = vertebra_of.get(disc["rank"]) if disc is not None else None
        rows.append({
            "patient": patient, "ivd_label": grade["label"], "level": disc["level"] if disc else None,
            "height_mm": disc["height_mm"] if disc else None,
            "height_index": disc["height_index"] if disc else None,
            "signal_ratio": disc["signal_ratio"] if disc else None,
            "canal_ap_mm": disc["canal_ap_mm"] if disc else None,
            "slip_mm": above["slip_mm"] if above else None,
            "slip_percent": above["slip_percent"] if above else None,
            "narrowing": grade["narrowing"], "pfirrmann": grade["pfirrmann"],
            "spondylolisthesis": grade["spondylolisthesis"],
            "depth_index": disc.get("depth_index") if disc else None,
        })
    return PatientLevels(naming=naming, discs=rows)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 pairs or a constant side."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


Statistic = Callable[[list[dict[str, Any]]], float]


def bootstrap_interval(rows: Sequence[Mapping[str, Any]], statistic: Statistic, *, resamples: int = 2000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over patients: each resample draws patients with
    replacement and takes all their rows. Resamples where the statistic is undefined are dropped; NaN, NaN
    when fewer than half remain."""
    patients = sorted({row["patient"] for row in rows})
    by_patient = {p: [row for row in rows if row["patient"] == p] for p in patients}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        drawn = rng.integers(len(patients), size=len(patients))
        value = statistic([row for k in drawn for row in by_patient[patients[k]]])
        if np.isfinite(value):
            values.append(value)
    if len(values) < resamples / 2:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _defined(rows: Iterable[Mapping[str, Any]], *keys: str) -> list[Mapping[str, Any]]:
    return [row for row in rows if all(row.get(k) is not None for k in keys)]


def _auroc_of(score: str, label: str, sign: float) -> Statistic:
    def statistic(rows: list[dict[str, Any]]) -> float:
        kept = _defined(rows, score, label)
        return auroc(np.array([sign * r[score] for r in kept]), np.array([r[label] > 0 for r in kept]))
    return statistic


def _spearman_of(score: str, grade: str) -> Statistic:
    def statistic(rows: list[dict[str, Any]]) -> float:
        kept = _defined(rows, score, grade)
        return spearman([r[score] for r in kept], [r[grade] for r in kept])
    return statistic


MEASURES: dict[str, tuple[str, str, str, Statistic]] = {
    "height_index_auroc": ("AUROC", "lower disc height index for disc narrowing", "height_index",
                           _auroc_of("height_index", "narrowing", -1.0)),
    "depth_index_auroc": ("AUROC", "lower depth index (disc height over the adjacent bodies' AP depth, over its "
                          "level's normal in the literature) for disc narrowing",
                          "depth_index", _auroc_of("depth_index", "narrowing", -1.0)),
    "height_mm_auroc": ("AUROC", "lower disc height (mm) for disc narrowing (secondary)", "height_mm",
                        _auroc_of("height_mm", "narrowing", -1.0)),
    "level_adjusted_index_auroc": ("AUROC", "lower height index over its level's median in the other patients, "
                                   "for disc narrowing (secondary)", "adjusted_index",
                                   _auroc_of("adjusted_index", "narrowing", -1.0)),
    "signal_spearman": ("Spearman", "disc signal ratio against the Pfirrmann grade", "signal_ratio",
                        _spearman_of("signal_ratio", "pfirrmann")),
    "slip_auroc": ("AUROC", "anterior slip (mm) of the vertebra above for spondylolisthesis", "slip_mm",
                   _auroc_of("slip_mm", "spondylolisthesis", 1.0)),
    "abs_slip_auroc": ("AUROC", "absolute slip (mm, either direction) for spondylolisthesis (secondary)",
                       "slip_mm", lambda rows: _auroc_of("abs_slip", "spondylolisthesis", 1.0)(
                           [{**r, "abs_slip": None if r["slip_mm"] is None else abs(r["slip_mm"])} for r in rows])),
}


def level_adjusted(discs: Sequence[Mapping[str, Any]], key: str = "height_index") -> list[dict[str, Any]]:
    """The rows with ``adjusted_index``: ``key`` over the median ``key`` of the same named level in the *other*
    patients (leave-one-patient-out norms; ``None`` where undefined or no other patient has the level)."""
    adjusted = []
    for row in discs:
        others = [r[key] for r in discs if r["level"] == row["level"] and r["patient"] != row["patient"]
                  and r[key] is not None]
        norm = float(np.median(others)) if others and row[key] is not None else None
        adjusted.append({**row, "adjusted_index": row[key] / norm if norm else None})
    return adjusted


def summarise(naming: Sequence[Mapping[str, Any]], discs: Sequence[Mapping[str, Any]], *,
              resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Every statistic with its bootstrap interval, the naming agreement, and whether each target is met."""
    discs = level_adjusted(discs)
    agree = [bool(n["agrees"]) for n in naming]
    share = float(np.mean(agree)) if agree else float("nan")
    naming_ci = bootstrap_interval([{"patient": n["patient"], "agrees": n["agrees"]} for n in naming],
                                   lambda rows: float(np.mean([r["agrees"] for r in rows])),
                                   resamples=resamples, seed=seed)
    summary: dict[str, Any] = {"naming_agreement": {
        "kind": "share", "what": "patients whose named disc count equals their graded disc count",
        "value": share, "ci95": list(naming_ci), "patients": len(naming),
        "all_graded_named": float(np.mean([bool(n["all_graded_named"]) for n in naming])) if naming else None,
        "doubtful": int(sum(bool(n["doubtful"]) for n in naming))}}
    covered = [{"patient": n["patient"], "ok": bool(n["all_graded_named"])} for n in naming]
    summary["graded_levels_named"] = {
        "kind": "share", "what": "patients whose every graded level carries a named disc (secondary)",
        "value": float(np.mean([c["ok"] for c in covered])) if covered else float("nan"),
        "ci95": list(bootstrap_interval(covered, lambda rows: float(np.mean([r["ok"] for r in rows])),
                                        resamples=resamples, seed=seed)),
        "patients": len(covered)}
    for key, (kind, what, score, statistic) in MEASURES.items():
        kept = _defined(discs, score)
        summary[key] = {"kind": kind, "what": what, "value": statistic(list(discs)),
                        "ci95": list(bootstrap_interval(discs, statistic, resamples=resamples, seed=seed)),
                        "discs": len(kept), "patients": len({r["patient"] for r in kept})}
    for key in ("height_index_auroc", "depth_index_auroc", "slip_auroc"):
        label = "spondylolisthesis" if key == "slip_auroc" else "narrowing"
        kept = _defined(discs, MEASURES[key][2], label)
        summary[key]["positives"] = int(sum(r[label] > 0 for r in kept))
    for key, target in TARGETS.items():
        value = summary[key]["value"]
        summary[key]["target"] = target
        summary[key]["met"] = bool(np.isfinite(value) and (value <= target if target < 0 else value >= target))
    return summary


def reference_slice(image_path: Path, mask_path: Path) -> Any:
    """The mid-sagittal slice of a SPIDER series with its reference mask (no heatmap: certain)."""
    from spinesegdiff.anatomy import scan_slice
    from spinesegdiff.data.io import read_image
    from spinesegdiff.data.labels import to_classes
    from spinesegdiff.data.preprocess import plan_grid

    image, geometry = read_image(image_path)
    mask, _ = read_image(mask_path)
    grid = plan_grid(image.shape, geometry)
    return scan_slice(to_classes(mask, source=mask_path), grid, grid.central_index, image_zyx=image)


def unet_slice(image_path: Path, unet: Any) -> Any:
    """The mid-sagittal slice of a series segmented by a U-Net alone (``unet``: a
    :class:`~spinesegdiff.pipelines.presegmenters.UNetPresegmenter`), its class probabilities restored to the
    native grid; the heatmap is their normalised entropy."""
    from spinesegdiff.pipelines.tiling import presegment_canvas

    def segment(images: np.ndarray) -> tuple[np.ndarray, None]:
        return presegment_canvas(unet, images)[0], None

    return _model_slice(image_path, segment)


def segmenter_slice(image_path: Path, segmenter: Any) -> Any:
    """The mid-sagittal slice of a series segmented by a diffusion model (``segmenter``: a
    :class:`~spinesegdiff.pipelines.segmenter.Segmenter`, from noise or refining its presegmenter's mask), its
    fused class probabilities restored to the native grid; the heatmap is the sampler's own (the entropy over
    its samples and fused steps), as ``predict`` reports it. No clean-up, as for the U-Net."""
    from spinesegdiff.pipelines.tiling import segment_canvas

    def segment(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = segment_canvas(segmenter.segment, images, presegmenter=segmenter.presegmenter)
        return result.class_probabilities[0], result.uncertainty[0]

    return _model_slice(image_path, segment)


def _model_slice(image_path: Path, segment: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]) -> Any:
    """Load a series on its central slice, ``segment`` the model-grid image (class probabilities ``(4, H, W)``
    and an optional heatmap ``(H, W)`` in [0, 1]) and restore both to the native grid as a
    :class:`~spinesegdiff.anatomy.SagittalSlice`; without a heatmap the probabilities' normalised entropy is
    the uncertainty."""
    from spinesegdiff.anatomy import SagittalSlice
    from spinesegdiff.data.preprocess import native_slice, restore_probabilities
    from spinesegdiff.pipelines.predict import load_scan

    scan = load_scan(image_path, slice_index="centre")
    grid = scan.prepared.grid
    model_probabilities, heatmap = segment(scan.prepared.images)
    probabilities = np.clip(restore_probabilities(model_probabilities, grid), 1e-8, 1.0)
    probabilities /= probabilities.sum(axis=0, keepdims=True)
    if heatmap is None:
        entropy = -(probabilities * np.log(probabilities)).sum(axis=0) / np.log(len(probabilities))
    else:
        entropy = restore_probabilities(heatmap[None], grid, background_channel=None)[0]
    index = scan.prepared.indices[0]
    return SagittalSlice(labels=probabilities.argmax(axis=0).astype(np.uint8),
                         row_mm=grid.rows.native_spacing, col_mm=grid.cols.native_spacing,
                         image=native_slice(scan.image, grid, index).astype(np.float32),
                         uncertainty=entropy.astype(np.float32), index=index)


def held_out_patients(run: str | Path) -> tuple[int, set[str]]:
    """``(test fold, patients)`` a run (U-Net or diffusion model) never saw, from the ``config.json`` and
    ``splits_final.json`` that ``spinesegdiff train`` writes into the run folder.

    Raises:
        InputError: the run folder lacks them, or trained on every fold.
    """
    import json

    from spinesegdiff.data.spider import parse_case_name

    run = Path(run)
    try:
        fold = int(json.loads((run / "config.json").read_text(encoding="utf-8"))["train"]["folds"]["fold"])
        split = json.loads((run / "splits_final.json").read_text(encoding="utf-8"))
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise InputError(run, f"not a finished training run with its split ({err})") from err
    if not 0 <= fold < len(split):
        raise InputError(run, "the run has no test fold (trained with --fold all)")
    return fold, {parsed[0] for name in split[fold]["test"] if (parsed := parse_case_name(name))}


DiscPlaces = list[tuple[str | None, tuple[float, float]]]
"""A slice's discs as ``(name, centroid (row_mm, col_mm))``."""
SAME_DISC_MM = 10.0
"""Discs of two segmentations of one slice whose centroids are this close are the same disc."""


def disc_places(report: LevelReport) -> DiscPlaces:
    return [(level.name, level.centroid_mm) for level in report.levels.discs]


def names_agree(found: DiscPlaces, reference: DiscPlaces, *, within_mm: float = SAME_DISC_MM) -> bool | None:
    """Do the discs found on both segmentations (centroids within ``within_mm``) carry the same names?
    ``None`` when no disc is on both."""
    pairs = []
    for name, centre in found:
        distances = [np.hypot(centre[0] - c[0], centre[1] - c[1]) for _, c in reference]
        if distances and min(distances) <= within_mm:
            pairs.append(name == reference[int(np.argmin(distances))][0])
    return all(pairs) if pairs else None


@dataclass(frozen=True)
class LevelsResult:
    """One source's comparison over the cohort: naming rows, disc rows, the summary, and each patient's discs
    (names and places, to compare the naming of two sources)."""

    source: str
    naming: list[dict[str, Any]]
    discs: list[dict[str, Any]]
    summary: dict[str, Any]
    places: dict[str, DiscPlaces]


def evaluate_source(source: str, slices: Iterable[tuple[str, Any]], gradings: Mapping[str, list[dict[str, int]]],
                    *, reference: Mapping[str, DiscPlaces] | None = None, resamples: int = 2000,
                    seed: int = 0) -> LevelsResult:
    """Measure every ``(patient, slice)`` and compare it with the patient's gradings (patients without
    gradings are left out), and, given the ``reference`` source's discs, whether the discs found on both
    carry the same names (``names_as_reference``)."""
    from spinesegdiff.anatomy import measure_levels

    naming, discs, places = [], [], {}
    for patient, scan in slices:
        if patient not in gradings:
            continue
        report = measure_levels(scan)
        places[patient] = disc_places(report)
        compared = compare_patient(patient, report, gradings[patient])
        row = {"source": source, **compared.naming}
        if reference is not None:
            row["names_as_reference"] = names_agree(places[patient], reference.get(patient, []))
        naming.append(row)
        discs += [{"source": source, **row} for row in compared.discs]
    summary = summarise(naming, discs, resamples=resamples, seed=seed)
    if reference is not None:
        judged = [n for n in naming if n["names_as_reference"] is not None]
        share = float(np.mean([n["names_as_reference"] for n in judged])) if judged else float("nan")
        summary["names_as_reference"] = {
            "kind": "share", "what": "patients whose discs found on both the prediction and the reference mask "
                                     "carry the same names (secondary)",
            "value": share, "ci95": list(bootstrap_interval(
                [{"patient": n["patient"], "ok": n["names_as_reference"]} for n in judged],
                lambda rows: float(np.mean([r["ok"] for r in rows])), resamples=resamples, seed=seed)),
            "patients": len(judged)}
    return LevelsResult(source, naming, discs, summary, places)


HELD_OUT_SOURCES = {"unet": "held-out U-Net", "diffusion": "held-out SpineSegDiff"}
"""The report's name of each kind of held-out model."""


def evaluate_levels(data: str | Path, metadata: str | Path, *, runs: str | None = None,
                    diffusion_runs: str | None = None, folds: Sequence[int] = (0, 1, 2, 3, 4),
                    resamples: int = 2000, seed: int = 0, device: str = "cpu") -> list[LevelsResult]:
    """The level validation on a SPIDER folder: on the reference masks, and on each patient's prediction by the
    model of the fold that held it out: the U-Nets of ``runs`` and the diffusion models of ``diffusion_runs``
    (each a path holding ``{fold}``; a diffusion model samples from noise with its default sampler).

    Raises:
        MissingInputError, InputError: a missing or unreadable folder, gradings file or run; a patient
            held out by two runs, or by none of them.
    """
    from spinesegdiff.data.spider import find_cases

    gradings = read_gradings(Path(metadata) / "radiological_gradings.csv")
    cases = [c for c in find_cases(data, contrast_set="T2w") if c.patient_id in gradings]
    if not cases:
        raise InputError(data, "no series of a graded patient")
    reference = ((c.patient_id, reference_slice(c.image_path, c.mask_path)) for c in cases)
    results = [evaluate_source("reference masks", reference, gradings, resamples=resamples, seed=seed)]
    for kind, pattern in (("unet", runs), ("diffusion", diffusion_runs)):
        if pattern is None:
            continue
        held = _fold_of_patients(pattern, folds)
        missing = sorted({c.patient_id for c in cases} - set(held), key=int)
        if missing:
            raise InputError(pattern, f"no run of folds {list(folds)} holds out patients {', '.join(missing)}")
        results.append(evaluate_source(HELD_OUT_SOURCES[kind], _predicted(cases, pattern, held, kind, device),
                                       gradings, reference=results[0].places, resamples=resamples, seed=seed))
    return results


def _fold_of_patients(runs: str, folds: Sequence[int]) -> dict[str, int]:
    if "{fold}" not in runs:
        raise InputError(runs, "the runs path must name each fold's run with {fold}")
    held: dict[str, int] = {}
    for fold in folds:
        run = runs.replace("{fold}", str(fold))
        _, patients = held_out_patients(run)
        for patient in patients:
            if patient in held:
                raise InputError(run, f"patient {patient} is also held out by fold {held[patient]}")
            held[patient] = fold
    return held


def _predicted(cases: Sequence[Any], runs: str, held: Mapping[str, int], kind: str,
               device: str) -> Iterable[tuple[str, Any]]:
    """Each case's slice segmented by its held-out fold's model (one loaded at a time): a U-Net (``kind``
    ``"unet"``) or a diffusion model sampling from noise (``"diffusion"``)."""
    from spinesegdiff.pipelines.presegmenters import UNetPresegmenter
    from spinesegdiff.pipelines.segmenter import Segmenter

    for fold in sorted(set(held.values())):
        run = runs.replace("{fold}", str(fold))
        if kind == "unet":
            measure = partial(unet_slice, unet=UNetPresegmenter.from_checkpoint(run, device=device))
        else:
            measure = partial(segmenter_slice, segmenter=Segmenter.from_checkpoint(run, device=device, quiet=True))
        for case in cases:
            if held.get(case.patient_id) == fold:
                yield case.patient_id, measure(case.image_path)


def _format(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def levels_markdown(results: Sequence[LevelsResult], commands: Sequence[str]) -> str:
    """The report: one row per statistic, one column per source, the target and whether it is met."""
    lines = ["# Per-level spine report against the radiologists (SPIDER gradings)", "",
             "Each statistic: value [95 % bootstrap interval over patients] (discs, patients).", "",
             "| statistic | " + " | ".join(r.source for r in results) + " | target |",
             "|---|" + "---|" * len(results) + "---|"]
    keys = ["naming_agreement", "graded_levels_named", "names_as_reference", *MEASURES]
    for key in keys:
        present = [r.summary[key] for r in results if key in r.summary]
        if not present:
            continue
        first = present[0]
        cells = []
        for result in results:
            s = result.summary.get(key)
            if s is None:
                cells.append("")
                continue
            count = f"{s['patients']} patients" if s["kind"] == "share" else f"{s['discs']} discs"
            met = "" if "met" not in s else (" met" if s["met"] else " not met")
            cells.append(f"{_format(s['value'])} [{_format(s['ci95'][0])}, {_format(s['ci95'][1])}] "
                         f"({count}){met}")
        target = TARGETS.get(key)
        target_text = "" if target is None else (f"<= {target}" if target < 0 else f">= {target}")
        lines.append(f"| {first['kind']}: {first['what']} | " + " | ".join(cells) + f" | {target_text} |")
    lines += ["", "Graded positives: " + "; ".join(
        f"{r.source}: narrowing {r.summary['height_index_auroc']['positives']}, spondylolisthesis "
        f"{r.summary['slip_auroc']['positives']}" for r in results)]
    lines += ["", "Patients whose named disc count differs from the graded count:", ""]
    for result in results:
        off = [f"{n['patient']} ({n['named_discs']} named, {n['graded_discs']} graded"
               f"{', doubtful' if n['doubtful'] else ''})" for n in result.naming if not n["agrees"]]
        lines.append(f"- {result.source}: {', '.join(off) if off else 'none'}")
    lines += ["", "Made with:", "", *[f"    {c}" for c in commands], "", CITATION]
    return "\n".join(lines) + "\n"


def write_levels_report(out: str | Path, results: Sequence[LevelsResult], commands: Sequence[str]) -> list[Path]:
    """``naming.csv``, ``discs.csv`` (every source's rows), ``summary.json`` and ``report.md`` in ``out``."""
    import json

    from spinesegdiff.files import atomic_write, atomic_write_text
    from spinesegdiff.pipelines.publish import strict_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def table(rows: list[dict[str, Any]]) -> Callable[[Path], None]:
        def write(path: Path) -> None:
            with path.open("w", newline="", encoding="utf-8") as handle:
                fields = list(dict.fromkeys(key for row in rows for key in row)) or ["source"]
                writer = csv.DictWriter(handle, fieldnames=fields)  # a key a source lacks stays empty
                writer.writeheader()
                writer.writerows(rows)
        return write

    written = [atomic_write(out / "naming.csv", table([n for r in results for n in r.naming])),
               atomic_write(out / "discs.csv", table([d for r in results for d in r.discs])),
               atomic_write_text(out / "summary.json", strict_json(
                   {"sources": {r.source: r.summary for r in results}, "commands": list(commands),
                    "citation": CITATION}) + "\n"),
               atomic_write_text(out / "report.md", levels_markdown(results, commands))]
    json.loads((out / "summary.json").read_text(encoding="utf-8"))  # strict JSON, or fail loudly here
    return written
