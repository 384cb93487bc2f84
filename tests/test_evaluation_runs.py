"""The held-out loop and the commands built on it: ``test`` (fold_test), ``ablate`` and ``benchmark``, on tiny
models and phantom data; scoring against oracles whose Dice is known."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from spinesegdiff.cli import main
from spinesegdiff.data.cache import build_cache
from spinesegdiff.errors import InputError, MissingInputError, SpineSegDiffError
from spinesegdiff.evaluation.held_out import HeldOutSlices, segment_timed
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.models import ModelConfig, build_model
from spinesegdiff.pipelines.segmenter import SamplerSettings, SliceSegmentation
from spinesegdiff.training.loop import TrainConfig, train

TINY = ModelConfig(variant="spinesegdiff", widths=(8, 8, 16), time_embed_dim=32, patch_size=2)
FAST = SamplerSettings(num_samples=2, num_steps=3, fuse_steps=2, precision="fp32", backend="torch")


def _train(cache_root: Path, out: Path, variant: str = "spinesegdiff") -> Path:
    config = TrainConfig.from_dict({
        "data": str(cache_root), "out": str(out), "model": {**TINY.to_dict(), "variant": variant}, "epochs": 1,
        "batch_size": 2, "num_folds": 3, "fold": 2, "val_fraction": 0.25, "val_samples": 1, "val_steps": 2,
        "val_fuse_steps": 1})
    return train(config, progress=False, stop_after_steps=1)


@pytest.fixture
def phantom_cache(make_spider_folder, tmp_path: Path):
    root = make_spider_folder([(str(p), "t2") for p in range(1, 7)], shape=(3, 96, 80))
    return build_cache(root, tmp_path / "cache", progress=False)


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.stack([labels == k for k in range(4)]).astype(np.float32)


def test_segment_timed_calls_per_slice_or_once_and_keeps_the_fastest_pass() -> None:
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    calls = []

    def record(batch: np.ndarray) -> int:
        calls.append(batch.shape)
        return int(batch.sum())

    per_slice = segment_timed(record, images)
    assert calls == [(1, 4, 4)] * 3 and per_slice.outputs == [int(images[k].sum()) for k in range(3)]
    assert per_slice.num_slices == 3 and per_slice.seconds_per_slice == pytest.approx(per_slice.seconds / 3)
    calls.clear()
    batched = segment_timed(record, images, per_slice=False, warm_up=True, repeats=2)
    assert calls == [(1, 4, 4), (3, 4, 4), (3, 4, 4)]  # warm-up on the first slice, then two timed passes
    assert batched.outputs == [int(images.sum())] and batched.seconds >= 0
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        segment_timed(record, images, repeats=0)


def test_held_out_fold_scores_an_oracle_and_an_empty_segmenter(phantom_cache, tmp_path: Path, monkeypatch) -> None:
    """A segmenter returning the cached truth scores 1.0 on the model grid and about 1 on the native grid; one
    returning background everywhere scores 0 on both (the structures are present in every central slice)."""
    from spinesegdiff.evaluation import fold_test

    run = _train(phantom_cache.root, tmp_path / "run")
    report = fold_test.evaluate_test_fold(run, settings=FAST, device="cpu", quiet=True)
    assert len(report.cases) == 2 and report.model_grid.shape == (2, 3) and report.native_grid.shape == (2, 3)
    summary = json.loads((run / "test_metrics.json").read_text(encoding="utf-8"))
    assert summary["num_cases"] == 2 and summary["fold"] == 2
    assert summary["native_grid"]["mDice"] == round(float(report.native_grid.mean()), 4)
    rows = list(csv.reader((run / "test_cases.csv").open()))
    assert rows[0] == ["case", "SC_320", "VB_320", "IVD_320", "SC_native", "VB_native", "IVD_native"]
    assert [r[0] for r in rows[1:]] == report.cases
    np.testing.assert_allclose(np.asarray([r[1:] for r in rows[1:]], float),
                               np.round(np.hstack([report.model_grid, report.native_grid]), 4))

    truth = {phantom_cache.images[i].tobytes(): np.asarray(phantom_cache.labels[i])
             for i in range(len(phantom_cache))}

    class Oracle:
        def __init__(self, segmenter, empty: bool) -> None:
            self.train_config, self.device, self.empty = segmenter.train_config, segmenter.device, empty
            self.describe = segmenter.describe

        def segment(self, images: np.ndarray) -> SliceSegmentation:
            labels = np.stack([np.zeros_like(truth[i.tobytes()]) if self.empty else truth[i.tobytes()]
                               for i in images]).astype(np.uint8)
            probs = np.stack([_one_hot(label) for label in labels])
            zeros = np.zeros(labels.shape, np.float32)
            return SliceSegmentation(probs[:, 1:], probs, labels, zeros, probs[:, 1:] * 0, probs[:, 1:] * 0, 0)

    real = fold_test.load_run_segmenter
    for empty in (False, True):
        def oracle(*args, empty=empty, **kwargs):
            segmenter, model_file = real(*args, **kwargs)
            return Oracle(segmenter, empty), model_file

        monkeypatch.setattr(fold_test, "load_run_segmenter", oracle)
        scored = fold_test.evaluate_test_fold(run, settings=FAST, device="cpu", quiet=True)
        if empty:
            np.testing.assert_array_equal(scored.model_grid, 0.0)
            np.testing.assert_array_equal(scored.native_grid, 0.0)
        else:
            np.testing.assert_array_equal(scored.model_grid, 1.0)
            assert (scored.native_grid > 0.8).all()


def test_native_grid_dice_compares_with_the_original_mask(phantom_cache) -> None:
    from spinesegdiff.evaluation.fold_test import native_grid_dice

    held_out = HeldOutSlices(0, phantom_cache, phantom_cache.indices(central_only=True)[:2])
    for k, entry in enumerate(held_out.entries):
        perfect = native_grid_dice(_one_hot(held_out.truth(k)), entry, held_out)
        assert (perfect > 0.8).all()
        background = np.zeros((4, 320, 320), np.float32)
        background[0] = 1.0
        np.testing.assert_array_equal(native_grid_dice(background, entry, held_out), [0.0, 0.0, 0.0])


def test_ablation_rows_calls_and_the_presegmenter_alone(phantom_cache, tmp_path: Path, capsys) -> None:
    from spinesegdiff.evaluation.ablation import ablation_table, run_ablation
    from spinesegdiff.models.checkpoint import load_checkpoint, resolve_model_file
    from spinesegdiff.pipelines.presegmenters import UNetPresegmenter

    refiner = _train(phantom_cache.root, tmp_path / "refiner")
    unet = _train(phantom_cache.root, tmp_path / "unet", variant="unet")
    out = tmp_path / "ablation"
    code = main(["ablate", "--run", str(refiner), "--preseg", "unet", "--preseg-model", str(unet), "--t-pre", "0",
                 "30", "1000", "--samples", "2", "--steps", "3", "--fuse-steps", "2", "--precision", "fp32",
                 "--backend", "torch", "--device", "cpu", "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    saved = json.loads((out / "ablation.json").read_text(encoding="utf-8"))
    rows = saved["rows"]
    assert ablation_table(rows) in printed.out and saved["presegmenter"] == "unet" and saved["fold"] == 2
    # T_pre = 0: the presegmenter alone (no network call); 30 and 1000 (from noise): the K = 3 steps asked for
    assert [(r["t_pre"], r["network_calls"], r["num_cases"]) for r in rows] == [(0, 0, 2), (30, 3, 2), (1000, 3, 2)]
    held_out = HeldOutSlices.of_run(load_checkpoint(resolve_model_file(refiner))["train_config"], refiner)
    presegmenter = UNetPresegmenter.from_checkpoint(unet)
    expected = np.asarray([dice_per_class(presegmenter(held_out.image(k)[None])[0].argmax(axis=0), held_out.truth(k))
                           for k in range(len(held_out))])
    for k, name in enumerate(("SC", "VB", "IVD")):
        assert rows[0][name]["mean"] == round(float(expected[:, k].mean()), 4)
    cases = list(csv.DictReader((out / "ablation_cases.csv").open()))
    assert [(int(c["t_pre"]), c["case"]) for c in cases] == [(t, c) for t in (0, 30, 1000) for c in held_out.cases]
    assert [float(cases[k]["VB"]) for k in range(2)] == [round(float(v), 4) for v in expected[:, 1]]
    with pytest.raises(InputError, match=r"T_pre must lie in 0\.\.1000, got 1001"):
        run_ablation(refiner, "unet", unet, t_pre=[30, 1001], settings=FAST, device="cpu", quiet=True)
    with pytest.raises(SpineSegDiffError, match="the ablation needs a presegmenter"):
        run_ablation(refiner, "none", settings=FAST, device="cpu", quiet=True)


def _tiny_checkpoint(folder: Path) -> Path:
    from spinesegdiff.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = build_model(TINY)
    return save_checkpoint(folder / "tiny.pt", {"model_config": TINY.to_dict(), "train_config": None,
                                                "scheduler": {"schedule": "linear", "num_train_timesteps": 1000},
                                                "model": net.state_dict(), "ema": net.state_dict()})


def test_benchmark_rows_are_exact_and_leave_the_threads_alone(tmp_path: Path) -> None:
    from spinesegdiff.evaluation.benchmark import benchmark_table, run_benchmark

    threads = torch.get_num_threads()
    rows = run_benchmark(_tiny_checkpoint(tmp_path), samples=2, steps=2, fuse_steps=2, reference_steps=3, repeats=1,
                         precision="fp32", backend="torch")
    assert torch.get_num_threads() == threads
    by_name = {row["procedure"].split(" ")[0]: row for row in rows}
    assert set(by_name) <= {"(a)", "(b)", "(b32)", "(c)"} and {"(a)", "(b)", "(b32)"} <= set(by_name)
    assert by_name["(a)"]["network_calls"] == 2 * 3  # S chains of 3 steps one after another
    assert by_name["(b)"]["network_calls"] == 2 and by_name["(b32)"]["network_calls"] == 2  # S batched, K = 2
    # (b) in PyTorch float32 is the same procedure as (b32): the same labels
    assert by_name["(b)"]["label_agreement_with_b32"] == 1.0 and by_name["(b32)"]["label_agreement_with_b32"] == 1.0
    assert by_name["(a)"]["speedup_vs_a"] == 1.0 and "label_agreement_with_b32" not in by_name["(a)"]
    assert all(row["slice"] == "phantom central slice (no --data given)" for row in rows)
    table = benchmark_table(rows).splitlines()
    assert table[0].startswith("phantom central slice (no --data given); ") and len(table) == 3 + len(rows)
    assert table[3] == (f"| {rows[0]['procedure']} | {rows[0]['seconds']:.2f} | 6 | 1.0x |  |")


def test_benchmark_of_a_missing_data_folder_is_one_line(tmp_path: Path, capsys) -> None:
    from spinesegdiff.evaluation.benchmark import run_benchmark

    with pytest.raises(MissingInputError, match="absent: no such SPIDER folder"):
        run_benchmark(tmp_path / "tiny.pt", data_dir=tmp_path / "absent")
    assert main(["benchmark", "--model", str(tmp_path / "tiny.pt"), "--data", str(tmp_path / "absent")]) == 2
    message = capsys.readouterr().err.strip()
    assert message == f"spinesegdiff: error: {tmp_path / 'absent'}: no such SPIDER folder"


def test_recorded_commands_are_relative_to_the_current_folder(tmp_path: Path) -> None:
    from spinesegdiff.evaluation.recording import recorded_command, recorded_path

    base = tmp_path / "repo"
    assert recorded_path(base / "runs" / "unet", base) == "runs/unet"
    assert recorded_path(base, base) == "."
    assert recorded_path("/elsewhere/runs/unet", base) == "/elsewhere/runs/unet"
    assert recorded_path("runs/unet", base) == "runs/unet"
    command = recorded_command(["spinesegdiff", "evaluate", "--out", str(base / "reports" / "x"), "--system",
                                f"A B={base}/runs/r,preseg=unet:{base}/runs/u,t_pre=30", "--metadata",
                                "../shared/data/spider-metadata"], base)
    assert command == ("spinesegdiff evaluate --out reports/x --system 'A B=runs/r,preseg=unet:runs/u,t_pre=30' "
                       "--metadata ../shared/data/spider-metadata")


def test_committed_reports_hold_no_absolute_paths() -> None:
    reports = Path(__file__).resolve().parents[1] / "reports"
    for path in sorted(reports.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".csv", ".md", ".tex", ".html"):
            text = re.sub(r"base64,[A-Za-z0-9+/=]+", "", path.read_text(encoding="utf-8"))  # embedded figures
            for prefix in ("/work/", "/tmp/", "/root/", "/home/"):
                assert prefix not in text, f"{path.relative_to(reports)} holds {prefix}"
