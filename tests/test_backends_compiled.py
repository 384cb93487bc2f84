"""The torch-free CPU path: NumPy sampler against the PyTorch one, converted bundles, OpenVINO's compiled cache,
and the shipped pipeline giving the PyTorch path's labels (issue 17)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spinesegdiff.diffusion import DDIMScheduler, make_schedule
from spinesegdiff.models import ModelConfig, build_model
from spinesegdiff.models.checkpoint import save_checkpoint
from spinesegdiff.pipelines import sampling
from spinesegdiff.pipelines.backends import numpy_sampler
from spinesegdiff.pipelines.backends.numpy_sampler import TorchCompatibleNormal
from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter, SliceSegmentation

openvino = pytest.importorskip("openvino")

TINY = ModelConfig(variant="spinesegdiff", widths=(8, 8, 16), time_embed_dim=32, patch_size=2)
TINY_UNET = ModelConfig(variant="unet", widths=(8, 8, 16), patch_size=2)
FAST = {"num_samples": 3, "num_steps": 3, "fuse_steps": 2, "precision": "fp32"}


def _slices(count: int = 2) -> np.ndarray:
    return (np.random.default_rng(0).random((count, 320, 320)) * 255).astype(np.uint8)


def _checkpoint(path: Path, config: ModelConfig, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = build_model(config)
    scheduler = {"schedule": "cosine", "num_train_timesteps": 1000}
    save_checkpoint(path, {"model_config": config.to_dict(), "train_config": {"schedule": "cosine", "fold": 3},
                           "scheduler": scheduler, "model": net.state_dict(), "ema": net.state_dict()})
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPINESEGDIFF_CACHE", str(folder))
    return folder


@pytest.mark.parametrize("seed", [0, 17, 2**40 + 3])
def test_numpy_noise_is_torch_randn(seed: int) -> None:
    """Same stream as torch.randn on a seeded CPU generator: whole 16-blocks, a ragged tail, successive calls."""
    generator, ours = torch.Generator().manual_seed(seed), TorchCompatibleNormal(seed)
    for shape in [(3, 3, 320, 320), (5, 7, 3), (16,), (2, 3, 17), (4, 3, 32, 32)]:
        expected = torch.randn(shape, generator=generator).numpy()
        drawn = ours.normal(shape)
        assert drawn.shape == expected.shape and drawn.dtype == np.float32
        np.testing.assert_allclose(drawn, expected, atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="fewer than 16"):
        ours.normal((3, 5))


@pytest.mark.parametrize(("steps", "start"), [(10, None), (50, None), (1, None), (2, 30), (3, 30), (1, 7),
                                              (31, 30)])
def test_timesteps_are_the_schedulers(steps: int, start: int | None) -> None:
    scheduler = DDIMScheduler(make_schedule("linear"))
    scheduler.set_timesteps(steps, start_timestep=start)
    assert numpy_sampler.ddim_timesteps(steps, 1000, start) == scheduler.timesteps.tolist()
    with pytest.raises(ValueError):
        numpy_sampler.ddim_timesteps(start + 2 if start is not None else 1001, 1000, start)


def test_fusion_and_entropies_match_the_torch_functions() -> None:
    rng = np.random.default_rng(3)
    means = rng.random((4, 2, 3, 8, 8), dtype=np.float32)
    means[0, 0, :, 0, 0] = (1.0, 0.0, 0.0)  # certain pixels: entropy 0 exactly at the ends of the range
    tensor = torch.from_numpy(means)
    for fusion in ("exp", "uncertainty"):
        np.testing.assert_allclose(numpy_sampler.fuse_step_means(means, fusion),
                                   sampling.fuse_step_means(tensor, fusion=fusion).numpy(), atol=1e-6)
    classes = numpy_sampler.class_probabilities(means[0])
    np.testing.assert_allclose(classes, sampling.class_probabilities(tensor[0]).numpy(), atol=1e-6)
    np.testing.assert_allclose(numpy_sampler.rescaled_entropy(classes),
                               sampling.rescaled_entropy(torch.from_numpy(classes)).numpy(), atol=1e-5)
    np.testing.assert_allclose(numpy_sampler.structure_entropy(means),
                               sampling.structure_entropy(tensor).numpy(), atol=1e-5)
    assert numpy_sampler.entropy_floor(4) == pytest.approx(sampling.entropy_floor(4), abs=1e-12)
    with pytest.raises(ValueError, match="fusion"):
        numpy_sampler.fuse_step_means(means, "mean")


@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
@pytest.mark.parametrize("refine", [False, True])
def test_numpy_sampler_is_the_torch_sampler(prediction_type: str, refine: bool) -> None:
    """A fake network (a fixed function of x_t, t and the image) through both samplers: same labels, same maps."""
    rng = np.random.default_rng(1)
    image = rng.uniform(-1, 1, (2, 1, 32, 32)).astype(np.float32)
    mask = rng.random((2, 3, 32, 32), dtype=np.float32)
    schedule = make_schedule("cosine")
    scheduler = DDIMScheduler(schedule, prediction_type=prediction_type)

    def fake_torch(x, t, *, image, image_features=None):
        return 3.0 * x - image * (t[:, None, None, None].float() / 500.0)

    def fake_numpy(x, t):
        return 3.0 * x - np.repeat(image, 4, axis=0) * np.float32(t / 500.0)

    kwargs = dict(num_samples=4, fuse_steps=2, prediction_type=prediction_type)
    start = {"start_mask": torch.from_numpy(mask), "start_timestep": 300} if refine else {}
    expected = sampling.sample_segmentation(fake_torch, torch.from_numpy(image), scheduler=scheduler, num_steps=3,
                                            generator=torch.Generator().manual_seed(5), **kwargs, **start)
    timesteps = numpy_sampler.ddim_timesteps(3, 1000, 300 if refine else None)
    noise = TorchCompatibleNormal(5).normal((8, 3, 32, 32))
    ours = numpy_sampler.sample_segmentation(fake_numpy, alphas_cumprod=schedule.alphas_cumprod.numpy(), batch=2,
                                             timesteps=timesteps, noise=noise, fusion="exp",
                                             start_mask=mask if refine else None, **kwargs)
    np.testing.assert_array_equal(ours.labels, expected.labels.numpy())
    for name in ("probabilities", "class_probabilities", "uncertainty", "structure_uncertainty", "variance"):
        np.testing.assert_allclose(getattr(ours, name), getattr(expected, name).numpy(), atol=2e-5, err_msg=name)
    assert type(ours) is SliceSegmentation  # one result type for both samplers, without PyTorch
    assert ours.network_calls == expected.num_network_calls == 3


def test_compiled_segmenter_gives_the_torch_labels_and_later_runs_without_torch(tmp_path: Path, cache: Path
                                                                               ) -> None:
    from spinesegdiff.pipelines.backends.compiled_segmenter import CompiledSegmenter

    model = _checkpoint(tmp_path / "tiny.pt", TINY)
    images = _slices(3)
    compiled = Segmenter.from_checkpoint(model, device="cpu", quiet=True,
                                         settings=SamplerSettings(**FAST, images_per_batch=2))
    assert isinstance(compiled, CompiledSegmenter)
    assert len(list((cache / "openvino").glob("bundle-*/manifest.json"))) == 1
    torch_path = Segmenter.from_checkpoint(model, device="cpu", quiet=True,
                                           settings=SamplerSettings(**FAST, backend="torch"))
    assert isinstance(torch_path, Segmenter) and torch_path.backend == "torch"
    done: list[int] = []
    ours, expected = compiled.segment(images, progress=done.append), torch_path.segment(images)
    assert done == [2, 1]  # two batches of images_per_batch = 2: the progress bar's updates
    np.testing.assert_array_equal(ours.labels, expected.labels)
    np.testing.assert_allclose(ours.probabilities, expected.probabilities, atol=1e-4)
    np.testing.assert_allclose(ours.uncertainty, expected.uncertainty, atol=1e-3)
    assert (ours.network_calls, expected.network_calls) == (2 * 3, 3 * 3)  # batches x steps: batching, same noise
    assert type(ours) is type(expected) is SliceSegmentation
    assert compiled.describe() == torch_path.describe() | {"backend": "openvino", "images_per_batch": 2}
    assert compiled.train_config["fold"] == 3 and compiled.model_config == TINY
    # a fresh process loads the bundle without importing PyTorch, and samples the same labels
    script = (f"import sys, numpy as np; from spinesegdiff.pipelines.segmenter import Segmenter, SamplerSettings; "
              f"s = Segmenter.from_checkpoint({str(model)!r}, device='cpu', quiet=True, "
              f"settings=SamplerSettings(**{FAST!r})); "
              f"r = s.segment(np.load({str(tmp_path / 'images.npy')!r})); np.save({str(tmp_path / 'l.npy')!r}, "
              f"r.labels); print(type(s).__name__, 'torch' in sys.modules)")
    np.save(tmp_path / "images.npy", images)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["CompiledSegmenter", "False"], run.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), expected.labels)


def test_compiled_presegmenter_matches_the_unet_and_yields_to_torch(tmp_path: Path, cache: Path) -> None:
    from spinesegdiff.pipelines.presegmenters import CompiledPresegmenter, UNetPresegmenter, load_presegmenter

    unet = _checkpoint(tmp_path / "unet.pt", TINY_UNET)
    compiled = load_presegmenter("unet", unet, device="cpu")
    assert isinstance(compiled, CompiledPresegmenter) and compiled.train_config["fold"] == 3
    eager = load_presegmenter("unet", unet, device="cpu", backend="torch")
    assert isinstance(eager, UNetPresegmenter)
    images = _slices(9)  # more than one batch of 8
    np.testing.assert_allclose(compiled(images), eager(images), atol=1e-5)
    # --backend torch: the segmenter swaps a compiled presegmenter for its PyTorch twin
    model = _checkpoint(tmp_path / "tiny.pt", TINY)
    segmenter = Segmenter.from_checkpoint(model, device="cpu", quiet=True, presegmenter=compiled,
                                          settings=SamplerSettings(**FAST, backend="torch"))
    assert isinstance(segmenter.presegmenter, UNetPresegmenter)
    with pytest.raises(Exception, match="not a segmentation U-Net"):
        load_presegmenter("unet", model, device="cpu")


def test_unwritable_cache_falls_back_to_the_torch_sampler(tmp_path: Path, monkeypatch) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    monkeypatch.setenv("SPINESEGDIFF_CACHE", str(in_the_way / "cache"))
    model = _checkpoint(tmp_path / "tiny.pt", TINY)
    segmenter = Segmenter.from_checkpoint(model, device="cpu", quiet=True, settings=SamplerSettings(**FAST))
    assert isinstance(segmenter, Segmenter) and segmenter.backend == "openvino"
    assert segmenter.segment(_slices(1)).labels.shape == (1, 320, 320)


def test_damaged_bundle_is_converted_again(tmp_path: Path, cache: Path) -> None:
    from spinesegdiff.pipelines.backends.compiled import BUNDLE_FORMAT, bundle_folder, read_manifest

    model = _checkpoint(tmp_path / "tiny.pt", TINY)
    Segmenter.from_checkpoint(model, device="cpu", quiet=True, settings=SamplerSettings(**FAST))
    folder = bundle_folder(model)
    assert read_manifest(folder)["format"] == BUNDLE_FORMAT
    (folder / "denoiser.bin").unlink()
    assert read_manifest(folder) is None
    (folder / "manifest.json").write_text("{not json")
    assert read_manifest(folder) is None
    import shutil

    shutil.rmtree(folder)
    Segmenter.from_checkpoint(model, device="cpu", quiet=True, settings=SamplerSettings(**FAST))
    assert read_manifest(folder) is not None
    # another file (one changed weight): another bundle
    _checkpoint(tmp_path / "tiny.pt", TINY, seed=1)
    assert bundle_folder(model) != folder


def test_openvino_compiled_model_cache(tmp_path: Path) -> None:
    from spinesegdiff.pipelines.backends.openvino import openvino_core

    core = openvino_core(tmp_path / "ov")
    assert core.get_property("CACHE_DIR") == str(tmp_path / "ov" / "compiled")
    model = openvino.convert_model(torch.nn.Conv2d(1, 2, 3).eval(), example_input=torch.zeros(1, 1, 8, 8))
    openvino.save_model(model, tmp_path / "conv.xml")
    core.compile_model(str(tmp_path / "conv.xml"), "CPU")
    assert list((tmp_path / "ov" / "compiled").glob("*.blob"))  # the compiled blob a later process imports
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    unwritable = openvino_core(blocker / "ov")  # cannot be created: no cache, and no error
    assert unwritable.get_property("CACHE_DIR") == ""
    unwritable.compile_model(str(tmp_path / "conv.xml"), "CPU")


def test_manifest_records_the_schedule(tmp_path: Path, cache: Path) -> None:
    from spinesegdiff.pipelines.backends.compiled import bundle_folder

    model = _checkpoint(tmp_path / "tiny.pt", TINY)
    Segmenter.from_checkpoint(model, device="cpu", quiet=True, settings=SamplerSettings(**FAST))
    manifest = json.loads((bundle_folder(model) / "manifest.json").read_text(encoding="utf-8"))
    np.testing.assert_allclose(manifest["alphas_cumprod"], make_schedule("cosine").alphas_cumprod.numpy(), rtol=0,
                               atol=0)
    assert manifest["graphs"] == ["denoiser", "encoder"] and manifest["scheduler"]["schedule"] == "cosine"


@pytest.mark.slow
def test_shipped_pipeline_compiled_gives_the_torch_labels() -> None:
    """The default pipeline (U-Net + refiner) on the shipped scan: compiled and PyTorch paths, same labels."""
    from spinesegdiff.assets import sample_scan_path
    from spinesegdiff.pipelines.backends.compiled_segmenter import CompiledSegmenter
    from spinesegdiff.pipelines.predict import load_scan
    from spinesegdiff.pipelines.presegmenters import resolve_presegmenter

    images = load_scan(sample_scan_path()).prepared.images
    results = {}
    for backend in ("auto", "torch"):
        presegmenter = resolve_presegmenter(None, None, user_model=False, device="cpu", backend=backend)
        segmenter = Segmenter.from_checkpoint(None, device="cpu", quiet=True, presegmenter=presegmenter,
                                              settings=SamplerSettings(backend=backend, precision="fp32"))
        assert isinstance(segmenter, CompiledSegmenter) == (backend == "auto")
        results[backend] = segmenter.segment(images)
    np.testing.assert_array_equal(results["auto"].labels, results["torch"].labels)
    np.testing.assert_allclose(results["auto"].uncertainty, results["torch"].uncertainty, atol=2e-3)


def test_compiled_presegmenter_answers_recent_slices_from_its_cache(tmp_path: Path, cache: Path) -> None:
    """The mid-sagittal choice presegments candidates, then the sampler asks again for the chosen one."""
    from spinesegdiff.pipelines import presegmenters

    compiled = presegmenters.load_presegmenter("unet", _checkpoint(tmp_path / "unet.pt", TINY_UNET), device="cpu")
    calls: list[int] = []
    run = compiled.graphs.run
    compiled.graphs.run = lambda name, arrays: calls.append(len(arrays[0])) or run(name, arrays)
    images = _slices(5)
    first = compiled(images)
    assert calls == [5]
    again = compiled(images[2:3])
    assert calls == [5] and np.array_equal(again, first[2:3])  # from the cache, no pass
    again[:] = -1  # a copy: the caller may change it
    fresh = compiled(np.concatenate([images[:1], 255 - images[:1]]))
    assert calls == [5, 1] and np.array_equal(fresh[0], first[0])
    for k in range(presegmenters.CACHED_SLICES):  # older slices are evicted
        compiled(np.full((1, 320, 320), k, dtype=np.uint8))
    compiled(images[2:3])
    assert calls[-1] == 1 and len(calls) == 2 + presegmenters.CACHED_SLICES + 1


def test_damaged_ir_is_converted_again_and_a_unet_bundle_is_no_diffusion_model(tmp_path: Path, cache: Path) -> None:
    from spinesegdiff.errors import InputError
    from spinesegdiff.pipelines.backends.compiled import bundle_folder
    from spinesegdiff.pipelines.backends.compiled_segmenter import CompiledSegmenter
    from spinesegdiff.pipelines.presegmenters import load_presegmenter

    model = _checkpoint(tmp_path / "tiny.pt", TINY)
    Segmenter.from_checkpoint(model, device="cpu", quiet=True, settings=SamplerSettings(**FAST))
    graph = bundle_folder(model) / "denoiser.xml"
    graph.write_text(graph.read_text("utf-8")[:100])  # truncated: OpenVINO cannot read it (nor find it in its cache)
    again = Segmenter.from_checkpoint(model, device="cpu", quiet=True, settings=SamplerSettings(**FAST))
    assert isinstance(again, CompiledSegmenter) and len(graph.read_text(encoding="utf-8")) > 100
    # a U-Net whose bundle exists is still refused as the diffusion model, and the other way round
    unet = _checkpoint(tmp_path / "unet.pt", TINY_UNET)
    load_presegmenter("unet", unet, device="cpu")
    with pytest.raises(InputError, match="is a segmentation U-Net"):
        Segmenter.from_checkpoint(unet, device="cpu", quiet=True, settings=SamplerSettings(**FAST))
    with pytest.raises(InputError, match="not a segmentation U-Net"):
        load_presegmenter("unet", model, device="cpu")
