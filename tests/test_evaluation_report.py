"""`spinesegdiff evaluate` end to end on a tiny synthetic run: predictions, tables, statistics, figures, HTML."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from spinesegdiff.cli import main
from spinesegdiff.data.cache import build_cache
from spinesegdiff.evaluation.report import build_report
from spinesegdiff.evaluation.systems import PredictionSet, SystemSpec
from spinesegdiff.training.loop import TrainConfig, train

TINY = {"widths": [8, 8, 16], "time_embed_dim": 32}


def _train(cache_root: Path, out: Path, variant: str, fold: int = 0) -> Path:
    config = TrainConfig.from_dict({
        "data": str(cache_root), "out": str(out), "model": {"variant": variant, **TINY}, "epochs": 1,
        "batch_size": 2, "val_every": 1, "val_samples": 1, "val_steps": 2, "val_fuse_steps": 2, "num_folds": 3,
        "fold": fold, "val_fraction": 0.2})
    return train(config, progress=False, stop_after_steps=1)


def _gradings(folder: Path, patients: list[int]) -> Path:
    folder.mkdir()
    header = ["Patient", "IVD label", "Modic", "UP endplate", "LOW endplate", "Spondylolisthesis",
              "Disc herniation", "Disc narrowing", "Disc bulging", "Pfirrman grade"]
    with (folder / "radiological_gradings.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for patient in patients:
            odd = patient % 2
            writer.writerow([patient, 1, odd, 0, 0, 0, 0, 1 - odd, int(patient % 3 == 0), 3 + odd])
    return folder


def test_system_specs_parse_and_reject() -> None:
    spec = SystemSpec.parse("refined=runs/r,preseg=unet:runs/u,t_pre=100")
    assert spec.kind == "run" and spec.preseg == "unet" and spec.t_pre == 100 and spec.preseg_path == Path("runs/u")
    assert SystemSpec.parse("nn=nnunet:results/x").kind == "nnunet"
    assert SystemSpec.parse("Diff-UNet 2D=runs/r,fusion=uncertainty").fusion == "uncertainty"
    per_fold = SystemSpec.parse("r=runs/r{fold},preseg=unet:runs/u{fold}").for_fold(3)
    assert per_fold.path == Path("runs/r3") and per_fold.preseg_path == Path("runs/u3")
    from spinesegdiff.errors import SpineSegDiffError

    for bad, message in (("noequals", "expected NAME=RUN"), ("w/o IE=runs/r", "cannot hold /"),
                         ("x=runs/r,t_pre=30", "t_pre needs preseg"), ("x=runs/r,preseg=foo:bar", "preseg must read"),
                         ("x=runs/r,colour=red", "unknown option 'colour=red'"),
                         ("x=runs/r,fusion=max", "fusion must be exp or uncertainty"),
                         ("x=nnunet:f,t_pre=3", "takes no options")):
        with pytest.raises(SpineSegDiffError, match=message):
            SystemSpec.parse(bad)


def test_evaluate_writes_tables_figures_and_an_offline_page(make_spider_folder, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    root = make_spider_folder([(str(p), "t2") for p in range(1, 10)], shape=(3, 96, 80))
    cache = build_cache(root, tmp_path / "cache", progress=False)
    diffusion = _train(cache.root, tmp_path / "diffusion", "spinesegdiff")
    unet = _train(cache.root, tmp_path / "unet", "unet")
    metadata = _gradings(tmp_path / "metadata", list(range(1, 10)))
    out = tmp_path / "report"
    code = main(["evaluate", "--system", f"SpineSegDiff={diffusion}", "--system", f"U-Net={unet}",
                 "--system", f"refined={diffusion},preseg=unet:{unet},t_pre=30", "--out", str(out),
                 "--metadata", str(metadata), "--samples", "2", "--steps", "2", "--fuse-steps", "2",
                 "--backend", "torch", "--quiet"])
    assert code == 0, capsys.readouterr().err
    for name in ("table1", "distances", "uncertainty"):
        for suffix in ("md", "csv", "tex"):
            assert (out / f"{name}.{suffix}").is_file()
    assert (out / "pathology.md").is_file() and "q (BH)" in (out / "pathology.md").read_text(encoding="utf-8")
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert {r["system"] for r in rows} == {"SpineSegDiff", "U-Net", "refined"} and len(rows) == 9
    assert all(0.0 <= float(r["dice_VB"]) <= 1.0 for r in rows)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 4 and "Table 1" in page and "http" not in page.split("<body>")[1]
    assert r"\begin{tabular}" in (out / "table1.tex").read_text(encoding="utf-8")
    # a second run reuses the saved predictions; without --metadata it says that it skips the pathologies; the
    # command is recorded with paths relative to the current folder
    argv = ["evaluate", "--system", f"SpineSegDiff={diffusion}", "--out", str(out), "--reuse", "--quiet"]
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 0
    assert "no pathology analysis" in capsys.readouterr().out
    assert "Pathologies" not in (out / "report.html").read_text("utf-8")
    recorded = json.loads((out / "summary.json").read_text(encoding="utf-8"))["commands"]
    assert recorded == ["spinesegdiff evaluate --system SpineSegDiff=diffusion --out report --reuse --quiet"]
    # a --metadata folder that does not exist is one line, before anything is predicted
    absent = tmp_path / "absent"
    assert main(["evaluate", "--system", f"SpineSegDiff={diffusion}", "--out", str(tmp_path / "other"),
                 "--metadata", str(absent), "--quiet"]) == 2
    message = capsys.readouterr().err.strip()
    assert message == f"spinesegdiff: error: {absent / 'radiological_gradings.csv'}: no such file"
    assert not (tmp_path / "other").exists()


def test_cross_validated_evaluation_scores_every_patient_once(make_spider_folder, tmp_path: Path, capsys) -> None:
    root = make_spider_folder([(str(p), "t2") for p in range(1, 10)], shape=(3, 96, 80))
    cache = build_cache(root, tmp_path / "cache", progress=False)
    for fold in range(3):
        _train(cache.root, tmp_path / f"unet-fold{fold}", "unet", fold=fold)
    metadata = _gradings(tmp_path / "metadata", list(range(1, 10)))
    out = tmp_path / "cv"
    code = main(["evaluate", "--system", f"U-Net={tmp_path / 'unet-fold{fold}'}", "--folds", "0-2", "--out", str(out),
                 "--metadata", str(metadata), "--quiet"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert sorted(int(r["patient"]) for r in rows) == list(range(1, 10))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["folds"] == [0, 1, 2] and summary["num_patients"] == 9
    assert "9 / 0" not in (out / "pathology.md").read_text(encoding="utf-8")  # both groups hold patients
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["fold0", "fold1", "fold2"]
    # one run for every fold is refused in one line
    bad = tmp_path / "bad"
    assert main(["evaluate", "--system", f"U-Net={tmp_path / 'unet-fold0'}", "--folds", "0,1", "--out", str(bad),
                 "--quiet"]) != 0
    message = capsys.readouterr().err.strip()
    assert "test fold 0, not 1" in message and "{fold}" in message and len(message.splitlines()) == 1
    assert not bad.exists()
    assert main(["evaluate", "--system", f"U-Net={tmp_path / 'unet-fold0'}", "--folds", "x", "--out", str(bad),
                 "--quiet"]) != 0
    assert "--folds" in capsys.readouterr().err


def _hand_made_case(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth with a canal, a 10 x 10 vertebra and a disc on 48 x 48; the prediction's vertebra is moved right by
    ``shift`` pixels (Dice ``1 - shift / 10``, HD95 ``shift`` mm), the rest is exact."""
    truth = np.zeros((48, 48), np.uint8)
    truth[4:44, 2:6] = 1
    truth[10:20, 15:25] = 2
    truth[25:30, 15:25] = 3
    prediction = truth.copy()
    prediction[10:20, 15:25] = 0
    prediction[10:20, 15 + shift:25 + shift] = 2
    return prediction, truth


def _prediction_set(name: str, labels: list[np.ndarray], cases: list[str]) -> PredictionSet:
    stacked = np.stack(labels)
    probabilities = np.stack([stacked == k for k in range(4)], axis=1).astype(np.float16)
    return PredictionSet(name, cases, stacked, probabilities, np.zeros(stacked.shape, np.float16), 0.5, {})


def test_report_tables_show_the_scores_of_hand_made_predictions(tmp_path: Path) -> None:
    cases = ["1_t2", "2_t2"]
    moved = [_hand_made_case(5), _hand_made_case(2)]  # vertebra Dice 0.5 and 0.8
    truth = {case: pair[1] for case, pair in zip(cases, moved, strict=True)}
    exact = _prediction_set("exact", [truth[c] for c in cases], cases)
    shifted = _prediction_set("shifted", [pair[0] for pair in moved], cases)
    images = {case: np.zeros((48, 48), np.uint8) for case in cases}
    build_report([exact, shifted], images=images, truth=truth, contrast=dict.fromkeys(cases, "T2"),
                 out=tmp_path / "report", commands=["spinesegdiff evaluate --system exact=runs/x"], folds=[0])
    table = list(csv.reader((tmp_path / "report" / "table1.csv").open()))
    assert table == [["system", "SC", "VB", "IVD", "mDice", "cases"],
                     ["exact", "1.000 +- 0.000", "1.000 +- 0.000", "1.000 +- 0.000", "1.000", "2"],
                     ["shifted", "1.000 +- 0.000", "0.650 +- 0.150", "1.000 +- 0.000", "0.883", "2"]]
    distances = {row["system"]: row for row in csv.DictReader((tmp_path / "report" / "distances.csv").open())}
    assert distances["exact"]["HD95 VB (mm)"] == "0.00 +- 0.00"
    assert distances["shifted"]["HD95 VB (mm)"] == "3.50 +- 1.50"  # 5 and 2 mm
    assert distances["shifted"]["HD95 SC (mm)"] == "0.00 +- 0.00"
    rows = {(r["system"], r["case"]): r for r in csv.DictReader((tmp_path / "report" / "cases.csv").open())}
    assert float(rows["shifted", "1_t2"]["dice_VB"]) == 0.5 and float(rows["shifted", "2_t2"]["dice_VB"]) == 0.8
    assert float(rows["shifted", "1_t2"]["hd95_VB"]) == 5.0 and float(rows["shifted", "1_t2"]["mDice"]) == 0.8333
    summary = json.loads((tmp_path / "report" / "summary.json").read_text(encoding="utf-8"))
    assert summary["commands"] == ["spinesegdiff evaluate --system exact=runs/x"] and summary["num_cases"] == 2


def test_score_case_keeps_hd95_and_assd_apart() -> None:
    from spinesegdiff.evaluation.scoring import score_case
    from spinesegdiff.evaluation.surface_metrics import assd

    prediction, truth = _hand_made_case(3)
    probabilities = np.stack([prediction == k for k in range(4)]).astype(np.float32)
    row = score_case(prediction, truth, probabilities, np.zeros(truth.shape, np.float32))
    expected_assd = assd(prediction == 2, truth == 2)
    assert row["hd95_VB"] == pytest.approx(3.0) and row["dice_VB"] == pytest.approx(0.7)
    assert row["assd_VB"] == pytest.approx(expected_assd) and expected_assd < 2.0
    assert row["hd95_SC"] == 0.0 and row["assd_IVD"] == 0.0 and row["mDice"] == pytest.approx(2.7 / 3)
    empty = truth.copy()
    empty[truth == 3] = 0  # no disc predicted: its distances are undefined, its Dice 0
    row = score_case(empty, truth, probabilities, np.zeros(truth.shape, np.float32))
    assert np.isnan(row["hd95_IVD"]) and np.isnan(row["assd_IVD"]) and row["dice_IVD"] == 0.0
