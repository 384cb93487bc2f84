"""Diff-UNet 3D: the slab network on a tiny preset, slab augmentation, a training run on a tiny synthetic slab
cache with its resume, and slab sampling read out on the central slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spinesegdiff.data.augment import AugmentConfig
from spinesegdiff.data.cache import load_cache
from spinesegdiff.data.folds import fold_data
from spinesegdiff.data.slabs import slabs_from_cache
from spinesegdiff.diffusion import DDIMScheduler, make_schedule
from spinesegdiff.errors import InputError
from spinesegdiff.models import ModelConfig, SpineSegDiffNet3d, build_model, preset_config
from spinesegdiff.models.checkpoint import load_checkpoint, load_model
from spinesegdiff.pipelines.slab_sampling import sample_central_slices, segment_slabs
from spinesegdiff.training.config import TrainConfig
from spinesegdiff.training.loop import train
from spinesegdiff.training.slab_batches import (
    augment_slabs,
    pack_slab_labels,
    slab_training_batch,
    unpack_slab_labels,
)

TINY_SLAB_MODEL = {"variant": "diffunet3d", "widths": [4, 8], "time_embed_dim": 16}


def _slab_inputs(batch: int, samples: int = 1, depth: int = 3, size: int = 16):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 1, depth, size, size, generator=generator) * 2 - 1
    x_t = torch.randn(batch * samples, 3, depth, size, size, generator=generator)
    return image, x_t, torch.arange(batch * samples) * 7


def test_tiny_preset_shapes_and_image_features() -> None:
    torch.manual_seed(0)
    net = build_model(preset_config("tiny", "diffunet3d")).eval()
    assert isinstance(net, SpineSegDiffNet3d) and net.has_image_encoder
    image, x_t, t = _slab_inputs(2, samples=3, depth=5)
    with torch.no_grad():
        features = net.encode_image(image)
        assert [tuple(f.shape) for f in features] == [(2, 8, 5, 16, 16), (2, 8, 5, 8, 8), (2, 16, 5, 4, 4),
                                                      (2, 16, 5, 2, 2)]
        reused = net(x_t, t, image=image, image_features=features)
        internal = net(x_t, t, image=image)
        zeroed = net(x_t, t, image=image, image_features=[torch.zeros_like(f) for f in features])
        later = net(x_t, t + 400, image=image, image_features=features)
    assert reused.shape == (6, 3, 5, 16, 16) and torch.isfinite(reused).all()
    torch.testing.assert_close(reused, internal)
    assert not torch.allclose(zeroed, reused)  # the image encoder matters ...
    assert not torch.allclose(later, reused)  # ... and so does the timestep


def test_compact_preset_folds_in_plane_patches() -> None:
    net = build_model(preset_config("compact", "diffunet3d")).eval()
    assert net.config.patch_size == 4 and net.config.size_divisor == 32
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 9, 32, 64), 5, image=torch.zeros(1, 1, 9, 32, 64))
    assert out.shape == (1, 3, 9, 32, 64)


def test_convolutions_reach_one_slice_each_way() -> None:
    torch.manual_seed(0)
    conv = build_model(preset_config("tiny", "diffunet3d")).down[0].conv1.conv  # the first denoiser convolution
    slab = torch.randn(1, conv.in_channels, 4, 8, 8)
    changed = slab.clone()
    changed[:, :, 0] += 1.0
    with torch.no_grad():
        base, other = conv(slab), conv(changed)
    assert not torch.allclose(base[:, :, 1], other[:, :, 1])  # 3x3x3: slice 0 informs slice 1 ...
    torch.testing.assert_close(base[:, :, 2:], other[:, :, 2:])  # ... and no slice further away


def test_slab_network_refuses_slices_and_bad_sizes() -> None:
    net = build_model(preset_config("tiny", "diffunet3d"))
    with pytest.raises(ValueError, match="must be 5D"):
        net(torch.zeros(1, 3, 16, 16), 1, image=torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 3, 3, 20, 16), 1, image=torch.zeros(1, 1, 3, 20, 16))
    with pytest.raises(ValueError, match="differs"):
        net(torch.zeros(1, 3, 3, 16, 16), 1, image=torch.zeros(1, 1, 5, 16, 16))


def test_labels_pack_and_unpack_exactly() -> None:
    labels = torch.randint(0, 4, (2, 9, 5, 6), generator=torch.Generator().manual_seed(1))
    codes = pack_slab_labels(labels)
    assert codes.shape == (2, 5, 6) and int(codes.max()) < 4**9
    assert torch.equal(unpack_slab_labels(codes, 9), labels)
    with pytest.raises(ValueError, match="at most 12 slices"):
        pack_slab_labels(torch.zeros(1, 13, 2, 2, dtype=torch.int64))


def test_every_slice_of_a_slab_is_augmented_alike() -> None:
    generator = torch.Generator().manual_seed(0)
    slice_image = torch.rand(4, 1, 32, 32, generator=generator)
    slice_labels = torch.randint(0, 4, (4, 1, 32, 32), generator=generator)
    images, labels = slice_image.expand(4, 5, 32, 32), slice_labels.expand(4, 5, 32, 32)
    config = AugmentConfig(p_spatial=1.0, p_gamma=1.0, p_remap=1.0, p_bias=1.0, p_noise=0.0)
    augmented, warped = augment_slabs(images, labels, config, torch.Generator().manual_seed(3))
    assert augmented.shape == images.shape and warped.shape == labels.shape and warped.dtype == torch.int64
    assert not torch.equal(warped, labels)  # the labels moved ...
    for depth in range(1, 5):  # ... and every slice like the first
        torch.testing.assert_close(augmented[:, depth], augmented[:, 0])
        assert torch.equal(warped[:, depth], warped[:, 0])
    with pytest.raises(ValueError, match="thick slices"):
        augment_slabs(images, labels, AugmentConfig(p_thick_slice=0.5), generator)
    with pytest.raises(ValueError, match="p_t1_contrast"):
        augment_slabs(images, labels, AugmentConfig(p_t1_contrast=0.5), generator)


def test_sampling_reads_out_each_slabs_central_slice() -> None:
    class DepthMarker(torch.nn.Module):
        """x0 logits: structure c is certain on slice c and absent elsewhere."""

        def forward(self, x_t, t, *, image, image_features):
            marker = torch.full_like(x_t, -20.0)
            for channel in range(3):
                marker[:, channel, channel] = 20.0
            return marker

    scheduler = DDIMScheduler(make_schedule("linear"), prediction_type="sample")
    image = torch.zeros(2, 1, 3, 8, 8)
    result = sample_central_slices(DepthMarker(), image, torch.tensor([2, 0]), scheduler=scheduler, num_samples=2,
                                   num_steps=3, fuse_steps=2, generator=torch.Generator().manual_seed(0))
    assert result.probabilities.shape == (2, 3, 8, 8) and result.uncertainty.shape == (2, 8, 8)
    assert torch.equal(result.labels[0], torch.full((8, 8), 3)) and torch.equal(result.labels[1], torch.ones(8, 8))
    assert torch.equal(result.probabilities.argmax(dim=1), torch.tensor([2, 0])[:, None, None].expand(2, 8, 8))
    assert result.probabilities.amax(dim=1).min() > 0.99 and result.variance.max() < 1e-6


def test_slab_validation_scores_each_slabs_central_slice() -> None:
    from spinesegdiff.data.slabs import Slabs
    from spinesegdiff.training.setup import make_scheduler
    from spinesegdiff.training.validation import validate_slabs

    class Oracle(torch.nn.Module):
        """Reads the labels back from the image (label * 80) and returns them as certain x0 logits."""

        def forward(self, x_t, t, *, image, image_features):
            labels = torch.round((image[:, 0] + 1) * 127.5 / 80).long()
            onehot = torch.stack([labels == c for c in (1, 2, 3)], dim=1).float()
            return (40 * onehot - 20).repeat_interleave(x_t.shape[0] // image.shape[0], dim=0)

    labels = np.random.default_rng(0).integers(0, 4, (3, 3, 8, 8)).astype(np.uint8)
    slabs = Slabs(images=labels * 80, labels=labels.copy(), cases=["1_a", "2_a", "3_a"], patients=["1", "2", "3"],
                  central=np.array([2, 0, 1]))
    config = _slab_config(Path("unused"), Path("unused"))
    slabs.labels[0, :2] = 0  # the slices that are not central no longer match the image: Dice stays 1
    dice = validate_slabs(Oracle(), slabs, scheduler=make_scheduler(config, config.model_config()), config=config,
                          device=torch.device("cpu"))
    np.testing.assert_array_equal(dice, np.ones((3, 3)))
    slabs.labels[0, 2] = 0  # a central slice without structures: its Dice is 0
    dice = validate_slabs(Oracle(), slabs, scheduler=make_scheduler(config, config.model_config()), config=config,
                          device=torch.device("cpu"))
    np.testing.assert_array_equal(dice[0], np.zeros(3))


@pytest.fixture
def slab_cache(make_spider_folder, tmp_path: Path):
    """8 phantom patients, every slice cached (3 per scan), shrunk to 32 x 32 so that a slab network trains fast."""
    from spinesegdiff.data.cache import build_cache

    root = make_spider_folder([(str(p), "t2") for p in range(1, 9)], shape=(3, 96, 80))
    cache = build_cache(root, tmp_path / "cache", slices="all", progress=False)
    images, labels = (np.array(array[:, ::10, ::10]) for array in (cache.images, cache.labels))
    del cache  # closes the memory maps before their files are rewritten
    np.save(tmp_path / "cache" / "images.npy", images)
    np.save(tmp_path / "cache" / "labels.npy", labels)
    return load_cache(tmp_path / "cache")


def _slab_config(cache_root: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(data=str(cache_root), out=str(out), model=TINY_SLAB_MODEL, epochs=2, batch_size=2,
                    val_every=1, val_samples=2, val_steps=2, val_fuse_steps=2, num_folds=4, fold=1,
                    val_fraction=0.2)
    return TrainConfig.from_dict(settings | overrides)


def test_slab_batches_are_augmented_slabs(slab_cache) -> None:
    slabs = slabs_from_cache(slab_cache)
    image, labels = slab_training_batch(slabs, [0, 3], torch.device("cpu"), AugmentConfig(enabled=False),
                                        torch.Generator())
    assert image.shape == (2, 1, 3, 32, 32) and labels.shape == (2, 3, 32, 32)
    torch.testing.assert_close(image[1, 0], torch.from_numpy(slabs.images[3] / 255.0).float())
    assert torch.equal(labels[0], torch.from_numpy(slabs.labels[0]).long())


def test_slab_training_resume_and_segmentation(slab_cache, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = _slab_config(slab_cache.root, out)
    train(config, progress=False, stop_after_steps=2)
    first = load_checkpoint(out / "last.pt")
    assert first["step"] == 2 and first["epoch"] == 0 and first["model_config"]["variant"] == "diffunet3d"
    assert (out / "best.pt").exists() and "val_mdice" in first["history"][-1]

    train(config, progress=False, resume=True)
    resumed = load_checkpoint(out / "last.pt")
    data = fold_data(config.folds, slab_cache)
    train_slabs = len({slab_cache.entries[i].case for i in data.train})  # 5 patients, one slab each
    assert resumed["epoch"] == 2 and resumed["step"] == 2 * -(-train_slabs // 2)
    assert any(not torch.equal(resumed["model"][k], first["model"][k]) for k in first["model"])
    net, model_config, _ = load_model(out / "best.pt")
    assert isinstance(net, SpineSegDiffNet3d) and model_config.spatial_dims == 3

    slabs = slabs_from_cache(slab_cache).subset(sorted({slab_cache.entries[i].case for i in data.test}))
    probabilities, uncertainty = segment_slabs(out, slabs.images, slabs.central, num_samples=2, num_steps=3,
                                               fuse_steps=2, seed=4, device="cpu")
    assert probabilities.shape == (len(slabs), 3, 32, 32) and uncertainty.shape == (len(slabs), 32, 32)
    assert probabilities.dtype == np.float32 and uncertainty.dtype == np.float32
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    assert uncertainty.min() >= 0 and 0 < uncertainty.max() <= 1
    again, _ = segment_slabs(out, slabs.images, slabs.central, num_samples=2, num_steps=3, fuse_steps=2, seed=4,
                             device="cpu")
    other, _ = segment_slabs(out, slabs.images, slabs.central, num_samples=2, num_steps=3, fuse_steps=2, seed=5,
                             device="cpu")
    np.testing.assert_array_equal(again, probabilities)
    assert not np.array_equal(other, probabilities)
    with pytest.raises(ValueError, match="central slice indices"):
        segment_slabs(out, slabs.images, slabs.central + 3, num_samples=1, num_steps=1, fuse_steps=1, device="cpu")


def test_segment_slabs_refuses_a_slice_network(tmp_path: Path) -> None:
    from spinesegdiff.models.checkpoint import save_checkpoint

    config = preset_config("tiny", "spinesegdiff")
    path = save_checkpoint(tmp_path / "slice.pt", {
        "model_config": config.to_dict(), "scheduler": {"schedule": "linear", "num_train_timesteps": 1000},
        "model": None, "ema": build_model(config).state_dict()})
    with pytest.raises(InputError, match="not a slab network"):
        segment_slabs(path, np.zeros((1, 3, 16, 16), np.uint8), np.array([1]), device="cpu")


def test_slab_runs_hold_out_the_2d_runs_patients(slab_cache, tmp_path: Path) -> None:
    from spinesegdiff.training.setup import set_up_run

    config = _slab_config(slab_cache.root, tmp_path / "run")
    run = set_up_run(config, resume=False, progress=False)
    data = fold_data(config.folds, slab_cache)  # what a 2D run of these settings trains and validates on
    assert run.slabs is not None and run.num_training_items == len(run.slabs.train)
    assert set(run.slabs.train.cases) == {slab_cache.entries[i].case for i in data.train}
    assert set(run.slabs.validation.cases) == {slab_cache.entries[i].case for i in data.validation}
    test_patients = {slab_cache.entries[i].patient for i in data.test}
    assert test_patients and not test_patients & set(run.slabs.train.patients + run.slabs.validation.patients)


def test_the_slice_segmenter_refuses_a_slab_model_in_one_line(tmp_path: Path) -> None:
    from spinesegdiff.models.checkpoint import save_checkpoint
    from spinesegdiff.pipelines.segmenter import Segmenter

    config = ModelConfig(**TINY_SLAB_MODEL)
    path = save_checkpoint(tmp_path / "slab.pt", {
        "model_config": config.to_dict(), "scheduler": {"schedule": "linear", "num_train_timesteps": 1000},
        "model": None, "ema": build_model(config).state_dict()})
    with pytest.raises(InputError, match="diffunet3d model of sagittal slabs"):
        Segmenter.from_checkpoint(path, device="cpu")
