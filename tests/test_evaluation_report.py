"""`spinesegdiff evaluate` end to end on a tiny synthetic run: predictions, tables, statistics, figures, HTML."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from spinesegdiff.cli import main
from spinesegdiff.data.cache import build_cache
from spinesegdiff.evaluation.systems import SystemSpec
from spinesegdiff.training.loop import TrainConfig, train

TINY = {"widths": [8, 8, 16], "time_embed_dim": 32}


def _train(cache_root: Path, out: Path, variant: str, fold: int = 0) -> Path:
    config = TrainConfig(data=str(cache_root), out=str(out), model={"variant": variant, **TINY}, epochs=1,
                         batch_size=2, val_every=1, val_samples=1, val_steps=2, val_fuse_steps=2, num_folds=3,
                         fold=fold, val_fraction=0.2)
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

    for bad in ("noequals", "w/o IE=runs/r", "x=runs/r,t_pre=30", "x=runs/r,preseg=foo:bar", "x=runs/r,colour=red",
                "x=runs/r,fusion=max"):
        with pytest.raises(SpineSegDiffError):
            SystemSpec.parse(bad)


def test_evaluate_writes_tables_figures_and_an_offline_page(make_spider_folder, tmp_path: Path, capsys) -> None:
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
    assert (out / "pathology.md").is_file() and "q (BH)" in (out / "pathology.md").read_text()
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert {r["system"] for r in rows} == {"SpineSegDiff", "U-Net", "refined"} and len(rows) == 9
    assert all(0.0 <= float(r["dice_VB"]) <= 1.0 for r in rows)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "Table 1" in page and "http" not in page.split("<body>")[1]
    assert r"\begin{tabular}" in (out / "table1.tex").read_text()
    # a second run reuses the saved predictions
    assert main(["evaluate", "--system", f"SpineSegDiff={diffusion}", "--out", str(out), "--reuse", "--quiet",
                 "--metadata", str(tmp_path / "absent")]) == 0


def test_cross_validated_evaluation_scores_every_patient_once(make_spider_folder, tmp_path: Path, capsys) -> None:
    import json

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
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"] == [0, 1, 2] and summary["num_patients"] == 9
    assert "9 / 0" not in (out / "pathology.md").read_text()  # both groups hold patients
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
