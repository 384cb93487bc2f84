"""Presegmentation: the built-in U-Net, cross-fitting, refinement from T_pre, and the nnU-Net export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spinesegdiff.data.folds import crossfit_parts, fold_data
from spinesegdiff.diffusion import SchedulerConfig
from spinesegdiff.models import ModelConfig, build_model, preset_config
from spinesegdiff.pipelines.presegmenters import (
    CrossFittedPresegmenter,
    UNetPresegmenter,
    load_presegmenter,
)
from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter
from spinesegdiff.training.config import TrainConfig
from spinesegdiff.training.loop import train

TINY_UNET = {"variant": "unet", "widths": [8, 8, 16], "time_embed_dim": 32}
TINY_DIFFUSION = ModelConfig(variant="spinesegdiff", widths=(8, 8, 16), time_embed_dim=32)


def _config(cache_root: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(data=str(cache_root), out=str(out), model=TINY_UNET, epochs=1, batch_size=2, val_every=1,
                    val_samples=1, val_steps=2, val_fuse_steps=2, num_folds=4, fold=1, val_fraction=0.2)
    settings.update(overrides)
    return TrainConfig.from_dict(settings)


class FakePresegmenter:
    """Returns a fixed mask: canal in the top rows, disc in the bottom rows, background elsewhere."""

    name = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images_u8: np.ndarray) -> np.ndarray:
        self.calls += 1
        probs = np.zeros((len(images_u8), 4, 320, 320), dtype=np.float32)
        probs[:, 0] = 1.0
        probs[:, 0, :40], probs[:, 1, :40] = 0.0, 1.0
        probs[:, 0, -40:], probs[:, 3, -40:] = 0.0, 1.0
        return probs


class CountingNetwork(torch.nn.Module):
    """A tiny diffusion network that records the timesteps it is called at."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build_model(TINY_DIFFUSION)
        self.config = TINY_DIFFUSION
        self.has_image_encoder = True
        self.timesteps: list[int] = []

    def encode_image(self, image):
        return self.net.encode_image(image)

    def forward(self, x_t, t, image, image_features=None):
        self.timesteps.append(int(torch.as_tensor(t).reshape(-1)[0]))
        return self.net(x_t, t, image=image, image_features=image_features)


def test_segmentation_unet_shapes_and_presegmenter_probabilities() -> None:
    config = preset_config("tiny", variant="unet")
    net = build_model(config)
    logits = net(torch.zeros(2, 1, 64, 64))
    assert logits.shape == (2, 4, 64, 64)
    probs = UNetPresegmenter(net)(np.zeros((3, 320, 320), dtype=np.uint8))
    assert probs.shape == (3, 4, 320, 320) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_refinement_starts_at_t_pre_and_counts_its_network_calls() -> None:
    torch.manual_seed(0)
    counting = CountingNetwork().eval()
    fake = FakePresegmenter()
    settings = SamplerSettings(num_samples=2, num_steps=2, precision="fp32", backend="torch", preseg_steps=30)
    segmenter = Segmenter(counting, TINY_DIFFUSION, None, device=torch.device("cpu"), settings=settings,
                          presegmenter=fake, scheduler_config=SchedulerConfig(schedule="cosine"))
    images = np.zeros((2, 320, 320), dtype=np.uint8)
    result = segmenter.segment(images)
    assert settings.refine_steps() == 2 and result.network_calls == 2 * 2  # 2 steps per image, as asked
    assert counting.timesteps[:2] == [30, 0] and max(counting.timesteps) == 30
    assert segmenter.settings.fuse_steps == 2  # every step run is fused by default
    assert SamplerSettings(preseg_steps=30).refine_steps() == 1  # by default one step per 30 noise steps
    assert SamplerSettings(preseg_steps=100).refine_steps() == 4
    assert SamplerSettings(preseg_steps=600).refine_steps() == 10
    assert SamplerSettings(preseg_steps=5, num_steps=10).refine_steps() == 5  # never more steps than T_pre
    assert fake.calls == 1 and segmenter.describe()["presegmenter"] == "fake"
    counting.timesteps.clear()
    own_mask = Segmenter(counting, TINY_DIFFUSION, None, device=torch.device("cpu"), presegmenter=fake,
                         settings=SamplerSettings(num_samples=2, precision="fp32", backend="torch",
                                                  preseg_steps=0)).segment(images)
    assert own_mask.network_calls == 0 and not counting.timesteps
    np.testing.assert_array_equal(own_mask.labels, fake(images).argmax(axis=1))
    assert own_mask.uncertainty.max() == 0.0  # a one-hot presegmentation is certain everywhere
    from_noise = Segmenter(counting, TINY_DIFFUSION, None, device=torch.device("cpu"),
                           settings=SamplerSettings(num_samples=2, precision="fp32", backend="torch"))
    assert from_noise.segment(images[:1]).network_calls == 10 and counting.timesteps[0] == 900


def test_preseg_steps_without_a_presegmenter_is_refused() -> None:
    from spinesegdiff.errors import SpineSegDiffError

    with pytest.raises(SpineSegDiffError, match="needs a presegmenter"):
        Segmenter(build_model(TINY_DIFFUSION), TINY_DIFFUSION, None, device=torch.device("cpu"),
                  settings=SamplerSettings(preseg_steps=30, backend="torch"))
    with pytest.raises(ValueError, match="T_pre"):
        SamplerSettings(preseg_steps=1000)


def test_crossfit_parts_and_assignment() -> None:
    parts = crossfit_parts([str(p) for p in range(1, 12)], 2, seed=3)
    assert sorted(parts[0] + parts[1], key=int) == [str(p) for p in range(1, 12)]
    assert not set(parts[0]) & set(parts[1]) and abs(len(parts[0]) - len(parts[1])) <= 1
    models = [UNetPresegmenter(build_model(preset_config("tiny", variant="unet"))) for _ in range(2)]
    crossfit = CrossFittedPresegmenter(models, [{"1", "2"}, {"2", "3"}])
    assert crossfit.model_for("3") == 0 and crossfit.model_for("1") == 1
    with pytest.raises(ValueError, match="patients 2"):
        crossfit.check_covers(["1", "2", "3"])
    probs = crossfit.probabilities(torch.zeros(3, 1, 64, 64), ["3", "1", "4"])
    assert probs.shape == (3, 4, 64, 64)


def test_unet_training_then_crossfitted_refiner_training(small_cache, tmp_path: Path) -> None:
    base = _config(small_cache.root, tmp_path / "unet")
    data = fold_data(base.folds, small_cache)
    patients = sorted({small_cache.entries[i].patient for i in [*data.train, *data.validation]}, key=int)
    part_a, part_b = crossfit_parts(patients, 2)
    unet_a = train(_config(small_cache.root, tmp_path / "unet-a", holdout_patients=part_a), progress=False,
                   stop_after_steps=2)
    unet_b = train(_config(small_cache.root, tmp_path / "unet-b", holdout_patients=part_b), progress=False,
                   stop_after_steps=2)
    a_data = fold_data(_config(small_cache.root, tmp_path / "x", holdout_patients=part_a).folds, small_cache)
    assert not {small_cache.entries[i].patient for i in [*a_data.train, *a_data.validation]} & set(part_a)
    presegmenter = load_presegmenter("unet", unet_a, device="cpu")
    assert presegmenter(np.zeros((1, 320, 320), np.uint8)).shape == (1, 4, 320, 320)

    refiner = _config(small_cache.root, tmp_path / "refiner", model=TINY_DIFFUSION.to_dict(), schedule="cosine",
                      preseg_models=[str(unet_a), str(unet_b)], val_steps=3)
    run = train(refiner, progress=False, stop_after_steps=2)
    assert (run / "best.pt").exists() and (run / "last.pt").exists()
    segmenter = Segmenter.from_checkpoint(run, device="cpu", presegmenter=presegmenter,
                                          settings=SamplerSettings(num_samples=2, backend="torch"))
    assert segmenter.segment(np.zeros((1, 320, 320), np.uint8)).network_calls == 1  # T_pre 30: one step
    assert segmenter.scheduler_config == SchedulerConfig(schedule="cosine")  # as trained, from the checkpoint

    from spinesegdiff.errors import SpineSegDiffError

    with pytest.raises(SpineSegDiffError, match="no presegmenter is blind"):
        train(_config(small_cache.root, tmp_path / "bad", model=TINY_DIFFUSION.to_dict(),
                      preseg_models=[str(unet_a)]), progress=False, stop_after_steps=1)


def test_nnunet_export_passes_its_own_integrity_check(small_cache, tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2", reason="nnU-Net v2 is an optional extra: pip install 'spinesegdiff[nnunet]'")
    from spinesegdiff.training import nnunet

    folders = nnunet.NnUNetFolders(tmp_path / "nnunet")
    cases = [e.case for e in small_cache.entries]
    split = fold_data(_config(small_cache.root, tmp_path / "x").folds, small_cache).split
    dataset = nnunet.export_dataset(np.asarray(small_cache.images), np.asarray(small_cache.labels), cases, folders,
                                    dataset_id=987, name="Phantoms", split=split)
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(dataset), num_processes=1)  # raises on any problem
    written = (folders.preprocessed / dataset.name / "splits_final.json").read_text(encoding="utf-8")
    assert '"val"' in written and '"test"' not in written
    bad_labels = np.asarray(small_cache.labels).copy()
    bad_labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match="0..3"):
        nnunet.export_dataset(np.asarray(small_cache.images), bad_labels, cases, folders, dataset_id=988)


@pytest.mark.slow
def test_tiny_nnunet_end_to_end(small_cache, tmp_path: Path) -> None:
    """Export, nnU-Net's planning and preprocessing, 1 epoch of 2 iterations, and prediction as a presegmenter."""
    pytest.importorskip("nnunetv2", reason="nnU-Net v2 is an optional extra: pip install 'spinesegdiff[nnunet]'")
    from spinesegdiff.training import nnunet

    folders = nnunet.NnUNetFolders(tmp_path / "nnunet")
    cases = [e.case for e in small_cache.entries]
    split = fold_data(_config(small_cache.root, tmp_path / "x").folds, small_cache).split
    nnunet.export_dataset(np.asarray(small_cache.images), np.asarray(small_cache.labels), cases, folders,
                          dataset_id=989, name="Tiny", split=split)
    nnunet.plan_and_preprocess(989, folders, processes=1, log=tmp_path / "plan.log")
    model = nnunet.train_fold(989, 1, folders, epochs=1, iterations=2, log=tmp_path / "train.log")
    assert (model / "fold_1" / "checkpoint_final.pth").is_file()
    presegmenter = load_presegmenter("nnunet", model, device="cpu")
    probs = presegmenter(np.asarray(small_cache.images[:1]))
    assert probs.shape == (1, 4, 320, 320)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-3)


def test_predict_refuses_preseg_options_without_a_presegmenter(tmp_path: Path, capsys) -> None:
    from spinesegdiff.assets import sample_scan_path
    from spinesegdiff.cli import main

    out = tmp_path / "out"
    assert main(["predict", "-i", str(sample_scan_path()), "-o", str(out), "--preseg", "none",
                 "--preseg-steps", "30"]) == 2
    assert "need --preseg unet or nnunet" in capsys.readouterr().err and not out.exists()
    assert main(["predict", "-i", str(sample_scan_path()), "-o", str(out), "--preseg", "nnunet"]) == 2
    assert "needs --preseg-model" in capsys.readouterr().err and not out.exists()


def test_a_unet_is_refused_as_the_diffusion_model(small_cache, tmp_path: Path) -> None:
    from spinesegdiff.errors import InputError

    unet = train(_config(small_cache.root, tmp_path / "unet"), progress=False, stop_after_steps=1)
    with pytest.raises(InputError, match="segmentation U-Net"):
        Segmenter.from_checkpoint(unet, device="cpu")


def test_sampler_defaults_depend_on_refining_or_sampling_from_noise() -> None:
    requested = SamplerSettings(preseg_steps=30)
    refining = requested.resolved(refining=True)
    assert (refining.num_samples, refining.num_steps, refining.fuse_steps) == (4, 1, 1)
    from_noise = SamplerSettings().resolved(refining=False)
    assert (from_noise.num_samples, from_noise.num_steps, from_noise.fuse_steps) == (15, 10, 10)
    asked = SamplerSettings(num_samples=15, num_steps=2, preseg_steps=30).resolved(refining=True)
    assert (asked.num_samples, asked.num_steps, asked.fuse_steps) == (15, 2, 2)
    assert SamplerSettings(num_steps=3).resolved(refining=False).fuse_steps == 3
    assert asked.resolved(refining=True) == asked  # resolving twice changes nothing
    with pytest.raises(ValueError, match="fuse_steps must lie in 1..num_steps"):
        SamplerSettings(num_steps=2, fuse_steps=3)
    with pytest.raises(ValueError, match="fuse_steps must be positive"):
        SamplerSettings(fuse_steps=0)
