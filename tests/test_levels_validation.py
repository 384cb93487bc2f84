"""The level report in predict's outputs, and its validation against the gradings (evaluation/levels.py,
``spinesegdiff evaluate-levels``): statistics worked out by hand, the JSON fields, the command's errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from levels_phantoms import spine_slice
from predict_helpers import FAST, predict, write_scan
from spinesegdiff.anatomy import LevelReport, draw_level_names, measure_levels
from spinesegdiff.errors import InputError
from spinesegdiff.evaluation.levels import (
    MEASURES,
    bootstrap_interval,
    compare_patient,
    level_adjusted,
    read_gradings,
    spearman,
    summarise,
)

SHARED = Path(os.environ.get("SPINESEGDIFF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _strict(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-strict JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_spearman_by_hand() -> None:
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / np.sqrt(1.5 * 2))  # average ranks for ties
    assert spearman([4, 3, 2, 1], [1, 2, 3, 4]) == pytest.approx(-1.0)
    assert np.isnan(spearman([1, 2], [2, 1])) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def _disc_row(patient: str, **values) -> dict:
    row = {"patient": patient, "level": "L4-L5", "height_index": None, "height_mm": None, "signal_ratio": None,
           "slip_mm": None, "depth_index": None, "narrowing": 0, "pfirrmann": 1, "spondylolisthesis": 0}
    return {**row, **values}


def test_auroc_counts_a_lower_height_index_as_narrowing() -> None:
    statistic = MEASURES["height_index_auroc"][3]
    rows = [_disc_row(str(k), height_index=h, narrowing=n) for k, (h, n) in
            enumerate([(0.2, 1), (0.3, 0), (0.4, 1), (0.5, 0)])]
    assert statistic(rows) == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs ordered right
    rows = [_disc_row(str(k), height_index=h, narrowing=n) for k, (h, n) in
            enumerate([(0.2, 1), (0.3, 1), (0.4, 0), (0.5, 0), (0.6, None)])]
    assert statistic([r for r in rows if r["narrowing"] is not None]) == pytest.approx(1.0)
    slip = MEASURES["slip_auroc"][3]
    assert slip([_disc_row("a", slip_mm=5.0, spondylolisthesis=1), _disc_row("b", slip_mm=-1.0),
                 _disc_row("c", slip_mm=None, spondylolisthesis=1)]) == pytest.approx(1.0)
    absolute = MEASURES["abs_slip_auroc"][3]
    assert absolute([_disc_row("a", slip_mm=-5.0, spondylolisthesis=1), _disc_row("b", slip_mm=1.0)]) == 1.0


def test_the_bootstrap_draws_patients_not_rows() -> None:
    rows = [{"patient": "A"}, {"patient": "A"}, {"patient": "B"}]
    low, high = bootstrap_interval(rows, lambda drawn: float(len(drawn)), resamples=2000, seed=1)
    assert (low, high) == (2.0, 4.0)  # BB -> 2 rows, AB -> 3, AA -> 4; drawing rows would always give 3
    assert bootstrap_interval(rows, lambda drawn: 0.5, resamples=100) == (0.5, 0.5)
    assert np.isnan(bootstrap_interval(rows, lambda drawn: float("nan"), resamples=50)[0])


def test_level_adjusted_index_uses_the_other_patients_only() -> None:
    rows = [_disc_row("a", height_index=0.2), _disc_row("b", height_index=0.4), _disc_row("c", height_index=0.6)]
    adjusted = [r["adjusted_index"] for r in level_adjusted(rows)]
    assert adjusted == pytest.approx([0.2 / 0.5, 0.4 / 0.4, 0.6 / 0.3])


def _report(ranks: list[int], slips: dict[int, float], depths: dict[int, float] | None = None) -> LevelReport:
    discs = [{"level": f"D{r}", "rank": r, "height_mm": 5.0 + r, "height_index": 0.1 * r, "signal_ratio": 0.2,
              "canal_ap_mm": 12.0} for r in ranks]
    for disc in discs if depths is not None else []:
        disc["depth_index"] = depths.get(disc["rank"])
    vertebrae = [{"level": f"V{r}", "rank": r, "slip_mm": slips.get(r), "slip_percent": None} for r in ranks]
    return LevelReport(levels=None, discs=discs, vertebrae=vertebrae, note={"doubtful": False, "reason": None})


def test_discs_are_matched_to_the_gradings_by_level() -> None:
    graded = [{"label": 0, "narrowing": 1, "pfirrmann": 4, "spondylolisthesis": 0},
              {"label": 1, "narrowing": 0, "pfirrmann": 2, "spondylolisthesis": 1}]
    compared = compare_patient("107", _report([3, 1, 2], {2: 4.5}), graded)
    assert compared.naming["named_discs"] == 3 and compared.naming["graded_discs"] == 2
    assert compared.naming["agrees"] is False and compared.naming["all_graded_named"] is True
    assert [r["level"] for r in compared.discs] == ["D1", "D2"]  # the lowest graded label meets the lowest disc
    assert [r["ivd_label"] for r in compared.discs] == [0, 1]
    assert compared.discs[1]["slip_mm"] == 4.5 and compared.discs[1]["spondylolisthesis"] == 1
    short = compare_patient("9", _report([1], {}), graded)
    assert short.discs[1]["level"] is None and short.naming["all_graded_named"] is False
    lumbar = [{**g, "label": g["label"] + 1} for g in graded]  # labels 1 (L5-S1) and 2 (L4-L5)
    missed = compare_patient("41", _report([2, 3], {}), lumbar)  # no L5-S1 disc found: no shift of the rest
    assert [r["level"] for r in missed.discs] == [None, "D2"]
    assert [r["depth_index"] for r in missed.discs] == [None, None]  # a report without depth indices
    depths = {1: 0.11, 2: 0.22, 3: 0.33}
    matched = compare_patient("41", _report([2, 3], {}, depths), lumbar)
    assert [r["depth_index"] for r in matched.discs] == [None, 0.22]  # by rank: L4-L5's, none for the missed one


def test_summary_says_which_target_is_met() -> None:
    naming = [{"patient": str(k), "agrees": k != 0, "all_graded_named": k != 1, "doubtful": False}
              for k in range(4)]
    discs = [_disc_row(str(k), height_index=0.1 + 0.1 * k, narrowing=int(k < 2), signal_ratio=1.0 - 0.2 * k,
                       pfirrmann=k + 1, slip_mm=float(k), spondylolisthesis=int(k == 3),
                       depth_index=[0.3, 0.1, 0.2, 0.4][k]) for k in range(4)]
    summary = summarise(naming, discs, resamples=200)
    assert summary["graded_levels_named"]["value"] == pytest.approx(0.75)
    assert summary["depth_index_auroc"]["value"] == pytest.approx(0.75)  # 3 of 4 pairs right: not 0.3 over 0.2
    assert not summary["depth_index_auroc"]["met"] and summary["depth_index_auroc"]["positives"] == 2
    assert summary["naming_agreement"]["value"] == pytest.approx(0.75) and not summary["naming_agreement"]["met"]
    assert summary["height_index_auroc"]["value"] == 1.0 and summary["height_index_auroc"]["met"]
    assert summary["signal_spearman"]["value"] == pytest.approx(-1.0) and summary["signal_spearman"]["met"]
    assert summary["slip_auroc"]["positives"] == 1 and summary["slip_auroc"]["met"]


def test_gradings_that_are_not_spiders_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "gradings.csv"
    bad.write_text("Patient,IVD label\n1,1\n", encoding="utf-8")
    with pytest.raises(InputError, match="gradings.csv: not SPIDER's radiological_gradings.csv"):
        read_gradings(bad)
    bad.write_text("Patient,IVD label,Disc narrowing,Pfirrman grade,Spondylolisthesis\n1,1,0,x,0\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 2: a grading is not a whole number"):
        read_gradings(bad)
    with pytest.raises(InputError, match="cannot read the gradings"):
        read_gradings(tmp_path / "missing.csv")


def _levels_cli(*args: str) -> tuple[int, str, str]:
    from spinesegdiff.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["evaluate-levels", *args])
    return code, out.getvalue(), err.getvalue()


def test_evaluate_levels_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "meta").mkdir()
    code, _, err = _levels_cli("--data", str(tmp_path / "nowhere"), "--metadata", str(tmp_path / "meta"),
                               "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1 and "radiological_gradings.csv" in err
    assert not (tmp_path / "out").exists()


def _two_real_patients(tmp_path: Path) -> tuple[Path, Path]:
    """A SPIDER folder with patients 7 and 209 (links to the shared data) and the metadata folder; skips when
    the shared data is absent."""
    data, metadata = SHARED / "spider-t2space", SHARED / "spider-metadata"
    if not (data / "images" / "7_t2_SPACE.mha").exists() or not (metadata / "radiological_gradings.csv").exists():
        pytest.skip(f"SPIDER data absent ({data}, {metadata})")
    subset = tmp_path / "spider"
    for folder in ("images", "masks"):
        (subset / folder).mkdir(parents=True)
        for patient in ("7", "209"):
            (subset / folder / f"{patient}_t2_SPACE.mha").symlink_to(data / folder / f"{patient}_t2_SPACE.mha")
    return subset, metadata


def test_evaluate_levels_on_two_real_patients(tmp_path: Path) -> None:
    subset, metadata = _two_real_patients(tmp_path)
    code, out, err = _levels_cli("--data", str(subset), "--metadata", str(metadata), "--out",
                                 str(tmp_path / "report"), "--bootstrap", "50")
    assert code == 0, err
    summary = _strict((tmp_path / "report" / "summary.json").read_text(encoding="utf-8"))
    naming = summary["sources"]["reference masks"]["naming_agreement"]
    assert naming["value"] == 1.0 and naming["patients"] == 2  # 7 and 8 discs named and graded
    table = (tmp_path / "report" / "discs.csv").read_text(encoding="utf-8")
    assert "reference masks" in out and table.count("\n") == 7 + 8 + 1
    assert "every graded level carries a named disc" in out and "lower depth index" in out
    rows = list(csv.DictReader(io.StringIO(table)))
    assert all(0.03 < float(r["depth_index"]) < 0.8 for r in rows if r["depth_index"])
    assert sum(bool(r["depth_index"]) for r in rows) >= 13
    code, _, err = _levels_cli("--data", str(subset), "--metadata", str(metadata), "--out", str(tmp_path / "r2"),
                               "--runs", "runs/unet-fold0")
    assert code == 2 and "{fold}" in err


def _fold_runs(folder: Path, model: Path, held_out: list[str]) -> str:
    """One run folder per fold, fold ``k`` holding out patient ``held_out[k]``, each with ``model`` as its
    checkpoint: the ``{fold}`` pattern ``spinesegdiff train`` leaves behind."""
    split = [{"train": [], "val": [], "test": [f"{patient}_t2_SPACE"]} for patient in held_out]
    for fold in range(len(held_out)):
        run = folder / f"run-fold{fold}"
        run.mkdir(parents=True)
        shutil.copy(model, run / "best.pt")
        (run / "config.json").write_text(json.dumps({"train": {"folds": {"fold": fold}}}), encoding="utf-8")
        (run / "splits_final.json").write_text(json.dumps(split), encoding="utf-8")
    return str(folder / "run-fold{fold}")


def test_each_patient_is_measured_by_the_diffusion_model_that_held_it_out(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spinesegdiff.evaluation import levels

    subset, metadata = _two_real_patients(tmp_path)
    runs = _fold_runs(tmp_path / "runs", tiny_model, ["209", "7"])
    measured = []
    real = levels.segmenter_slice

    def recording(path: Path, segmenter) -> object:
        measured.append((path.name, Path(segmenter.model_name).parent.name))
        return real(path, segmenter)

    monkeypatch.setattr(levels, "segmenter_slice", recording)
    results = levels.evaluate_levels(subset, metadata, diffusion_runs=runs, folds=[0, 1], resamples=20)
    assert sorted(measured) == [("209_t2_SPACE.mha", "run-fold0"), ("7_t2_SPACE.mha", "run-fold1")]
    assert [r.source for r in results] == ["reference masks", "held-out SpineSegDiff"]
    assert sorted(n["patient"] for n in results[1].naming) == ["209", "7"]
    with pytest.raises(InputError, match="holds out patients 209"):
        levels.evaluate_levels(subset, metadata, diffusion_runs=runs, folds=[1], resamples=20)


def test_a_diffusion_models_slice_carries_its_own_heatmap(tmp_path: Path) -> None:
    from spinesegdiff.evaluation.levels import segmenter_slice
    from spinesegdiff.pipelines.results import SliceSegmentation

    subset, _ = _two_real_patients(tmp_path)

    class CertainBackground:
        """Background everywhere, certain by its probabilities, with a heatmap of 0.25 from its samples."""

        presegmenter = None

        def segment(self, images: np.ndarray) -> SliceSegmentation:
            count, size = len(images), images.shape[-1]
            probabilities = np.zeros((count, 4, size, size), np.float32)
            probabilities[:, 0] = 1.0
            probabilities[:, 2, :, : size // 2] = 0.9  # the front half: vertebra
            probabilities[:, 0, :, : size // 2] = 0.1
            return SliceSegmentation(
                probabilities=probabilities[:, 1:], class_probabilities=probabilities,
                labels=probabilities.argmax(axis=1).astype(np.uint8),
                uncertainty=np.full((count, size, size), 0.25, np.float32),
                structure_uncertainty=np.zeros((count, 3, size, size), np.float32),
                variance=np.zeros((count, 3, size, size), np.float32), network_calls=1)

    scan = segmenter_slice(subset / "images" / "7_t2_SPACE.mha", CertainBackground())
    assert scan.labels.shape == scan.uncertainty.shape == scan.image.shape == (640, 512)
    assert np.median(scan.uncertainty) == pytest.approx(0.25, abs=1e-3), "the sampler's heatmap, not an entropy"
    assert scan.index == 4, "the central of the nine slices"
    front = scan.labels[:, :200] == 2  # columns run anterior to posterior
    assert front.mean() > 0.95 and not (scan.labels[:, 312:] == 2).any()


def test_overlay_names_are_drawn_beside_the_spine() -> None:
    from PIL import Image, ImageDraw

    report = measure_levels(spine_slice())
    rows, cols = report.levels.instance_map.shape
    green = (0, 128, 0)  # no name or box is drawn in this colour
    canvas = Image.new("RGB", (cols, rows), green)
    written = draw_level_names(ImageDraw.Draw(canvas, "RGBA"), report, 0.5, 0.6,
                               to_canvas=lambda row, col: (col, row), corner=(2.0, 2.0))
    texts = {name: (x, y) for x, y, name in written}
    assert {"L5-S1", "L5", "L1", "L1-L2"} <= set(texts)
    levels = {lv.name: lv for lv in report.levels.levels}
    pixels = np.asarray(canvas)
    for name, (col, row) in texts.items():
        front = np.nonzero(report.levels.body(levels[name]) if levels[name].kind == "vertebra"
                           else report.levels.mask(levels[name]))[1].min()
        assert col < front and abs(row - levels[name].centroid_mm[0] / 0.5) < 1.0
        drawn = pixels[round(row) - 2:round(row) + 3, max(0, round(col) - 10):round(col)]
        assert (drawn != green).any(axis=-1).all(), f"{name}: nothing drawn just left of where it ends"
        assert (pixels[round(row), round(col) + 3:] == green).all(), f"{name}: drawn right of where it ends"
    colours = pixels.reshape(-1, 3).astype(int)
    assert (colours.min(axis=1) >= 240).any(), "no white name (vertebrae)"
    red, green_channel, blue = colours.T
    assert ((red >= 235) & (abs(green_channel - 201) <= 15) & (abs(blue - 203) <= 15)).any(), "no pink name (discs)"


@pytest.mark.usefixtures("spine_judgement_off")
def test_predict_writes_the_level_lists_in_strict_json(tiny_model: Path, tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "scan.mha")
    result = predict("-i", str(scan), "-o", str(tmp_path / "out"), "--model", str(tiny_model), *FAST)
    assert result.returncode == 0, result.stderr
    report = _strict((tmp_path / "out" / "scan.json").read_text(encoding="utf-8"))
    assert isinstance(report["discs"], list) and isinstance(report["vertebrae"], list)
    assert set(report["levels"]) == {"named_from", "doubtful", "reason", "slice", "contrast"}


@pytest.mark.usefixtures("spine_judgement_off")
def test_write_outputs_reports_the_phantoms_levels(tiny_model: Path, tmp_path: Path) -> None:
    from spinesegdiff.data.phantom import make_phantom
    from spinesegdiff.pipelines.predict import segment, write_outputs
    from spinesegdiff.pipelines.settings import SamplerSettings

    phantom = make_phantom(shape=(3, 240, 200), spacing=(1.0, 1.0, 3.0), num_vertebrae=6, seed=1)
    result = segment((phantom.image * 800, phantom.geometry), model=tiny_model, device="cpu", quiet=True,
                     settings=SamplerSettings(num_samples=1, num_steps=1, fuse_steps=1))
    result.labels = phantom.labels.copy()  # the phantom's own labels stand in for a trained model's
    paths = write_outputs(result, tmp_path)
    report = _strict(paths["report"].read_text(encoding="utf-8"))
    assert [d["level"] for d in report["discs"]] == ["T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5"]
    assert [v["level"] for v in report["vertebrae"]] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    assert report["levels"]["slice"] == 1 and report["levels"]["named_from"] == "lowest vertebra"
    for disc in report["discs"]:
        assert set(disc) >= {"level", "height_mm", "height_index", "signal_ratio", "canal_ap_mm", "uncertainty"}
        assert 5.0 < disc["height_mm"] < 14.0
    for vertebra in report["vertebrae"]:
        assert set(vertebra) >= {"level", "height_mm", "slip_mm", "uncertainty"}


def test_the_level_table_for_the_review_page() -> None:
    from spinesegdiff.anatomy import level_table_html

    report = measure_levels(spine_slice(slips={2: 6.0})).to_dict()
    html = level_table_html(report)
    order = [html.index(f"<td>{name}</td>") for name in ("L1", "L1-L2", "L2", "L2-L3", "L3", "L5", "L5-S1")]
    assert order == sorted(order)  # top to bottom, vertebrae and discs alternating
    assert ('<tr class="vertebra"><td>L3</td><td>25</td><td>&ndash;</td><td>&ndash;</td><td>&ndash;</td>'
            "<td>6, 16.7 %</td></tr>") in html
    report["levels"]["doubtful"], report["levels"]["reason"] = True, "a <missing> disc"
    assert "a &lt;missing&gt; disc" in level_table_html(report)
    assert level_table_html({"discs": [], "vertebrae": []}) == ""


def test_names_are_compared_on_the_discs_both_segmentations_found() -> None:
    from spinesegdiff.evaluation.levels import names_agree

    reference = [("L4-L5", (100.0, 50.0)), ("L5-S1", (140.0, 60.0)), ("T12-L1", (10.0, 40.0))]
    assert names_agree([("L4-L5", (103.0, 52.0)), ("L5-S1", (141.0, 58.0))], reference) is True  # top one missed
    assert names_agree([("L5-S1", (103.0, 52.0))], reference) is False  # the L4-L5 disc called L5-S1
    assert names_agree([("L5-S1", (300.0, 52.0))], reference) is None  # nothing found on both
