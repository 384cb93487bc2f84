"""Segmenter, ONNX Runtime and OpenVINO backends, precision, on tiny models."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

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
    caller = build_model(TINY).to(torch.bfloat16).train()  # converted from a float32 CPU copy, left as it is
    before = {name: tensor.clone() for name, tensor in caller.state_dict().items()}
    converted = OpenVinoDenoiser(caller, threads=1, cache=tmp_path)
    assert {p.dtype for p in caller.parameters()} == {torch.bfloat16} and caller.training
    for name, tensor in caller.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)
    net = copy.deepcopy(caller).float().eval()  # the same weights in float32: the cached graph is this one's
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


def test_onnx_backend_leaves_the_callers_network_alone() -> None:
    """The ONNX export runs on a CPU copy in eval mode; the caller's network keeps its mode and weights (the
    OpenVINO backend's copy is checked with a bfloat16 network above)."""
    pytest.importorskip("onnxruntime")
    from spinesegdiff.pipelines.backends.onnx import OnnxDenoiser

    torch.manual_seed(1)
    net = build_model(TINY).train()
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    OnnxDenoiser(net, threads=1)
    assert net.training and {p.device.type for p in net.parameters()} == {"cpu"}
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)


def test_nnunet_folder_variables_are_set_only_while_nnunet_is_imported(monkeypatch) -> None:
    import os

    from spinesegdiff.pipelines.nnunet import NNUNET_FOLDER_VARIABLES, environment_defaults

    raw, _, results = NNUNET_FOLDER_VARIABLES
    monkeypatch.delenv(raw, raising=False)
    monkeypatch.setenv(results, "/mine")
    with environment_defaults({raw: "/placeholder", results: "/placeholder"}):
        assert os.environ[raw] == "/placeholder" and os.environ[results] == "/mine"
    assert raw not in os.environ and os.environ[results] == "/mine"
    with pytest.raises(RuntimeError, match="inside"), environment_defaults({raw: "/placeholder"}):
        raise RuntimeError("inside")
    assert raw not in os.environ


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


def test_auto_precision_follows_the_hardware(monkeypatch) -> None:
    from spinesegdiff.pipelines import segmenter as module
    from spinesegdiff.pipelines.segmenter import fast_bfloat16_available, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == torch.float32 and resolve_precision("bf16", cpu) == torch.bfloat16
    expected = torch.bfloat16 if fast_bfloat16_available(cpu) else torch.float32
    assert resolve_precision("auto", cpu) == expected
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(module, "fast_bfloat16_available", lambda device, native=native: native)
        assert resolve_precision("auto", cpu) == dtype
        assert resolve_precision("fp32", cpu) == torch.float32  # an explicit choice wins


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_bfloat16_network_behind_the_float32_sampler() -> None:
    cpu = torch.device("cpu")
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
    for k in (1, 2, 3):
        assert _dice(a.labels == k, b.labels == k) >= 0.98, k
    # bfloat16 keeps 8 significant bits: each stored value is off by up to 2^-9 (0.2 %) relatively; over the
    # network's layers and the DDIM steps that adds up to about 1e-2 in the x0 logits, which the sigmoid
    # (slope <= 1/4) turns into < 5e-3 in the probabilities (measured: 6e-3 at most, 7e-4 on average). 0.02
    # leaves a margin of 3, and still fails when the bf16 path computes something else (a 0.1 tolerance did not)
    np.testing.assert_allclose(b.probabilities, a.probabilities, atol=0.02)
    assert float(np.abs(b.probabilities - a.probabilities).mean()) < 2e-3
    with pytest.raises(ValueError, match="precision must be one of"):
        SamplerSettings(precision="fp16")
