"""Segmenter, ONNX Runtime backend, held-out fold evaluation and the benchmark, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spinesegdiff.data.cache import build_cache
from spinesegdiff.models import ModelConfig, build_model
from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter

TINY = ModelConfig(variant="spinesegdiff", widths=(8, 8, 16), time_embed_dim=32, patch_size=2)
FAST = SamplerSettings(num_samples=2, num_steps=3, fuse_steps=2, precision="fp32", backend="torch")


def _slices(count: int = 2) -> np.ndarray:
    return (np.random.default_rng(0).random((count, 320, 320)) * 255).astype(np.uint8)


def test_segmenter_shapes_ranges_and_determinism() -> None:
    torch.manual_seed(0)
    segmenter = Segmenter(build_model(TINY), TINY, {"schedule": "linear"}, device=torch.device("cpu"),
                          settings=FAST)
    result = segmenter.segment(_slices())
    assert result.probabilities.shape == (2, 3, 320, 320) and result.class_probabilities.shape == (2, 4, 320, 320)
    assert result.labels.shape == (2, 320, 320) and result.labels.dtype == np.uint8
    assert result.uncertainty.min() >= 0 and result.uncertainty.max() <= 1
    np.testing.assert_allclose(result.class_probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert result.network_calls == 2 * 3  # one batched call per step, per image
    again = segmenter.segment(_slices())
    np.testing.assert_array_equal(result.uncertainty, again.uncertainty)
    reference = segmenter.segment(_slices(1), reference_procedure=True, reference_steps=4)
    assert reference.network_calls == 2 * 4  # S chains of 4 steps
    assert segmenter.fusion == "exp"


def test_sampler_settings_validation() -> None:
    with pytest.raises(ValueError, match="fuse_steps must lie in 1..num_steps"):
        SamplerSettings(num_steps=5, fuse_steps=10)
    with pytest.raises(ValueError, match="must be positive"):
        SamplerSettings(num_samples=0)


def test_diffunet_variant_uses_uncertainty_fusion() -> None:
    config = ModelConfig(variant="diffunet2d", widths=(8, 8, 16), time_embed_dim=32, patch_size=2)
    segmenter = Segmenter(build_model(config), config, None, device=torch.device("cpu"), settings=FAST)
    assert segmenter.fusion == "uncertainty"


def test_onnx_runtime_backend_matches_pytorch() -> None:
    pytest.importorskip("onnxruntime")
    from spinesegdiff.pipelines.backends.onnx import OnnxDenoiser

    torch.manual_seed(1)
    net = build_model(TINY).eval()
    onnx_net = OnnxDenoiser(net, threads=1)
    image = torch.rand(1, 1, 320, 320) * 2 - 1
    x_t = torch.randn(3, 3, 320, 320)
    t = torch.tensor([999, 500, 0])
    with torch.no_grad():
        expected = net(x_t, t, image=image, image_features=net.encode_image(image))
    got = onnx_net(x_t, t, image=image, image_features=onnx_net.encode_image(image))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    eager = Segmenter(net, TINY, None, device=torch.device("cpu"), settings=FAST).segment(_slices(1))
    fast = Segmenter(onnx_net, TINY, None, device=torch.device("cpu"), settings=FAST).segment(_slices(1))
    np.testing.assert_allclose(fast.probabilities, eager.probabilities, atol=1e-4)


def test_openvino_backend_matches_pytorch_and_reuses_its_cache(tmp_path: Path, monkeypatch) -> None:
    openvino = pytest.importorskip("openvino")
    from spinesegdiff.pipelines.backends.openvino import OpenVinoDenoiser

    torch.manual_seed(1)
    net = build_model(TINY).eval()
    converted = OpenVinoDenoiser(net, threads=1, cache=tmp_path)
    assert len(list((tmp_path / "openvino").glob("denoiser-*.xml"))) == 1
    image = torch.rand(1, 1, 320, 320) * 2 - 1
    x_t = torch.randn(3, 3, 320, 320)
    t = torch.tensor([999, 500, 0])
    with torch.no_grad():
        expected = net(x_t, t, image=image, image_features=net.encode_image(image))
    got = converted(x_t, t, image=image, image_features=converted.encode_image(image))
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached graph should have been read")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    cached = OpenVinoDenoiser(net, threads=1, cache=tmp_path)
    torch.testing.assert_close(cached(x_t, t, image=image), expected, atol=1e-3, rtol=1e-3)
    monkeypatch.undo()
    eager = Segmenter(net, TINY, None, device=torch.device("cpu"), settings=FAST)
    through_openvino = Segmenter(net, TINY, None, device=torch.device("cpu"),
                                 settings=SamplerSettings(num_samples=2, num_steps=3, fuse_steps=2,
                                                          precision="fp32", backend="openvino"))
    assert through_openvino.describe()["backend"] == "openvino" and eager.describe()["backend"] == "torch"
    np.testing.assert_allclose(through_openvino.segment(_slices(1)).probabilities,
                               eager.segment(_slices(1)).probabilities, atol=1e-3)


def test_backend_choice_follows_what_is_installed(monkeypatch) -> None:
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.pipelines.backends import openvino as openvino_backend
    from spinesegdiff.pipelines.segmenter import resolve_backend

    cpu = torch.device("cpu")
    monkeypatch.setattr(openvino_backend, "openvino_available", lambda: False)
    assert resolve_backend("auto", cpu) == "torch"
    with pytest.raises(SpineSegDiffError, match="not installed"):
        resolve_backend("openvino", cpu)
    monkeypatch.setattr(openvino_backend, "openvino_available", lambda: True)
    assert resolve_backend("auto", cpu) == "openvino"
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert resolve_backend("torch", cpu) == "torch"
    with pytest.raises(SpineSegDiffError, match="CPU only"):
        resolve_backend("openvino", torch.device("cuda"))


def test_held_out_fold_evaluation(make_spider_folder, tmp_path: Path) -> None:
    from spinesegdiff.evaluation.fold_test import evaluate_test_fold
    from spinesegdiff.training.loop import TrainConfig, train

    root = make_spider_folder([(str(p), "t2") for p in range(1, 7)], shape=(3, 96, 80))
    cache = build_cache(root, tmp_path / "cache", progress=False)
    config = TrainConfig(data=str(cache.root), out=str(tmp_path / "run"), model=TINY.to_dict(), epochs=1,
                         batch_size=2, num_folds=3, fold=2, val_fraction=0.25, val_samples=1, val_steps=2,
                         val_fuse_steps=1)
    run = train(config, progress=False, stop_after_steps=1)
    report = evaluate_test_fold(run, settings=FAST, device="cpu", quiet=True)
    assert len(report.cases) == 2 and report.model_grid.shape == (2, 3) and report.native_grid.shape == (2, 3)
    assert ((report.native_grid >= 0) & (report.native_grid <= 1)).all()
    summary = json.loads((run / "test_metrics.json").read_text())
    assert summary["num_cases"] == 2 and summary["fold"] == 2 and "native_grid" in summary
    assert (run / "test_cases.csv").read_text().count("\n") == 3


def test_benchmark_rows(tmp_path: Path) -> None:
    from spinesegdiff.evaluation.benchmark import run_benchmark
    from spinesegdiff.models.checkpoint import save_checkpoint

    net = build_model(TINY)
    model = save_checkpoint(tmp_path / "tiny.pt", {"model_config": TINY.to_dict(), "train_config": None,
                                                   "model": net.state_dict(), "ema": net.state_dict()})
    rows = run_benchmark(model, samples=2, steps=2, fuse_steps=2, reference_steps=3, repeats=1, threads=2)
    by_name = {row["procedure"].split(" ")[0]: row for row in rows}
    assert by_name["(a)"]["network_calls"] == 2 * 3 and by_name["(b)"]["network_calls"] == 2
    assert all(row["seconds"] > 0 and row["speedup_vs_a"] > 0 for row in rows)
    assert by_name["(b32)"]["label_agreement_with_b32"] == 1.0  # (b32) against itself
    assert all(0 <= row.get("label_agreement_with_b32", 0) <= 1 for row in rows)
    if "(bt)" in by_name:  # (b) ran through OpenVINO: the authors' procedure is timed through it too
        assert by_name["(a')"]["network_calls"] == 2 * 3


def test_bfloat16_network_behind_the_float32_sampler() -> None:
    from spinesegdiff.pipelines.segmenter import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32 and resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("auto", cpu) in (torch.float32, torch.bfloat16)
    torch.manual_seed(2)
    net = build_model(TINY)
    fp32 = Segmenter(net, TINY, None, device=cpu, settings=SamplerSettings(num_samples=2, num_steps=3,
                                                                          fuse_steps=2, precision="fp32",
                                                                          backend="torch"))
    bf16 = Segmenter(net, TINY, None, device=cpu, settings=SamplerSettings(num_samples=2, num_steps=3,
                                                                          fuse_steps=2, precision="bf16",
                                                                          backend="torch"))
    assert next(net.parameters()).dtype == torch.float32, "the caller's network is left in float32"
    assert bf16.describe()["precision"] == "bf16" and fp32.describe()["precision"] == "fp32"
    a, b = fp32.segment(_slices(1)), bf16.segment(_slices(1))
    assert b.probabilities.dtype == np.float32
    np.testing.assert_allclose(b.probabilities, a.probabilities, atol=0.1)
    with pytest.raises(ValueError, match="precision must be one of"):
        SamplerSettings(precision="fp16")
