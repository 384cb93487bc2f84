"""Training: a 2-step run and its resume (equal to an uninterrupted run), the sectioned settings, checkpoints and
their scheduler, augmentation, fold bookkeeping, and learnability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spinesegdiff.cli import main
from spinesegdiff.data.augment import AugmentConfig, augment_batch, invert_contrast, random_remap
from spinesegdiff.data.folds import fold_data
from spinesegdiff.data.splits import patient_of
from spinesegdiff.errors import InputError
from spinesegdiff.models.checkpoint import export_weights, load_checkpoint, load_model, save_checkpoint
from spinesegdiff.training.config import FLAT_KEYS, TrainConfig, make_train_config
from spinesegdiff.training.loop import train

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = {"variant": "spinesegdiff", "widths": [8, 8, 16], "time_embed_dim": 32}


def _config(cache_root: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(data=str(cache_root), out=str(out), model=TINY_MODEL, epochs=2, batch_size=2, val_every=1,
                    val_samples=1, val_steps=2, val_fuse_steps=2, num_folds=4, fold=1, val_fraction=0.2)
    settings.update(overrides)
    return TrainConfig.from_dict(settings)  # the flat form


def test_fold_bookkeeping_keeps_test_and_validation_apart(small_cache) -> None:
    config = _config(small_cache.root, Path("unused"))
    data = fold_data(config.folds, small_cache)
    patients = lambda idx: {small_cache.entries[i].patient for i in idx}  # noqa: E731
    assert data.train and data.validation and data.test
    assert not patients(data.train) & patients(data.test)
    assert not patients(data.validation) & patients(data.test)
    assert not patients(data.train) & patients(data.validation)
    test_patients = {patient_of(c) for c in data.split[1]["test"]}
    assert patients(data.test) == test_patients


def test_two_steps_then_resume(small_cache, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = _config(small_cache.root, out)
    train(config, progress=False, stop_after_steps=2)
    first = load_checkpoint(out / "last.pt")
    assert first["step"] == 2 and first["epoch"] == 0
    assert first["train_config"]["folds"]["fold"] == 1 and first["model_config"]["widths"] == [8, 8, 16]
    assert set(first) >= {"model", "ema", "optimizer", "rng", "history", "best_metric", "scheduler"}
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert (out / "best.pt").exists() and saved["train"]["optimisation"]["epochs"] == 2
    assert TrainConfig.from_dict(saved["train"]) == config and saved["scheduler"] == first["scheduler"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert len(json.loads((out / "splits_final.json").read_text(encoding="utf-8"))) == 4
    with pytest.raises(InputError, match="already holds a training run"):
        train(config, progress=False)
    train(config, progress=False, resume=True)
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["epoch"] == 2 and resumed["step"] > 2
    changed = [not torch.equal(resumed["model"][k], first["model"][k]) for k in first["model"]]
    assert any(changed)
    assert all("val_mdice" in record for record in resumed["history"])


def test_resume_without_run_is_refused(small_cache, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="has no last.pt"):
        train(_config(small_cache.root, tmp_path / "new"), progress=False, resume=True)


def test_checkpoint_round_trip_and_export(small_cache, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_config(small_cache.root, out), progress=False, stop_after_steps=1)
    model, config, payload = load_model(out / "last.pt")
    assert config.widths == (8, 8, 16)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, payload["ema"][key])
    slim = export_weights(out / "last.pt", tmp_path / "model.pt")
    assert slim.stat().st_size < (out / "last.pt").stat().st_size
    half_model, _, _ = load_model(slim)
    x = torch.randn(1, 3, 32, 32)
    y = torch.rand(1, 1, 32, 32) * 2 - 1
    t = torch.tensor([10])
    with torch.no_grad():
        torch.testing.assert_close(half_model(x, t, image=y), model(x, t, image=y), atol=5e-2, rtol=5e-2)


def test_not_a_model_file(tmp_path: Path) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="model.pt: not a spinesegdiff model file"):
        load_model(bogus)
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(InputError, match="no spinesegdiff checkpoint header"):
        load_model(bogus)
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_model(tmp_path / "absent.pt")


def test_train_cli(small_cache, tmp_path: Path, capsys) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"model": TINY_MODEL, "epochs": 1, "batch_size": 2, "val_steps": 2,
                                    "val_fuse_steps": 2, "val_samples": 1, "num_folds": 4}))
    code = main(["train", "--data", str(small_cache.root), "--out", str(tmp_path / "run"), "--config",
                 str(settings), "--fold", "all", "--quiet", "--device", "cpu"])
    assert code == 0
    saved = load_checkpoint(tmp_path / "run" / "best.pt")
    assert saved["train_config"]["folds"]["fold"] == -1 and saved["epoch"] == 1
    assert main(["train", "--data", str(small_cache.root), "--out", str(tmp_path / "r2"), "--epochs", "0"]) == 2
    assert "invalid training settings" in capsys.readouterr().err
    settings.write_text(json.dumps({"epochs": 1, "epoch_count": 3}))
    assert main(["train", "--data", str(small_cache.root), "--out", str(tmp_path / "r3"), "--config",
                 str(settings)]) == 2
    assert "unknown training settings: epoch_count" in capsys.readouterr().err


def test_augmentation_is_seeded_and_keeps_ranges() -> None:
    image = torch.rand(3, 1, 32, 32)
    labels = torch.randint(0, 4, (3, 32, 32))
    config = AugmentConfig(p_spatial=1.0, p_gamma=1.0, p_remap=1.0, p_bias=1.0, p_noise=1.0)
    a = augment_batch(image, labels, config, torch.Generator().manual_seed(5))
    b = augment_batch(image, labels, config, torch.Generator().manual_seed(5))
    c = augment_batch(image, labels, config, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert a[0].min() >= 0 and a[0].max() <= 1 and a[0].shape == image.shape
    assert set(a[1].unique().tolist()) <= {0, 1, 2, 3} and a[1].dtype == labels.dtype
    off = augment_batch(image, labels, AugmentConfig(enabled=False), torch.Generator())
    assert off[0] is image and off[1] is labels


def test_identity_spatial_keeps_labels() -> None:
    labels = torch.randint(0, 4, (2, 16, 16))
    config = AugmentConfig(p_spatial=0.0, p_gamma=0.0, p_remap=0.0, p_inversion=0.0, p_bias=0.0, p_noise=0.0)
    _, out_labels = augment_batch(torch.rand(2, 1, 16, 16), labels, config, torch.Generator())
    assert torch.equal(out_labels, labels)


def test_remap_and_inversion_keep_air_dark() -> None:
    image = torch.tensor([[[[0.0, 0.05, 0.5, 1.0]]]])
    remapped = random_remap(image, AugmentConfig(), torch.Generator().manual_seed(0))
    assert remapped[0, 0, 0, 0] == 0 and remapped.min() >= 0 and remapped.max() <= 1
    inverted = invert_contrast(image)
    assert inverted[0, 0, 0, 0] == 0 and inverted[0, 0, 0, 1] == pytest.approx(0.05)
    assert inverted[0, 0, 0, 3] < inverted[0, 0, 0, 2]


@pytest.mark.slow
def test_tiny_model_learns_the_phantom() -> None:
    """Learnability: a tiny SpineSegDiff learns phantom slices to Dice >= 0.8 within a short CPU budget."""
    from spinesegdiff.data.phantom import phantom_batch
    from spinesegdiff.diffusion import DDIMScheduler, make_schedule
    from spinesegdiff.evaluation.metrics import dice_per_class
    from spinesegdiff.models import ModelConfig, build_model
    from spinesegdiff.pipelines.sampling import sample_segmentation
    from spinesegdiff.training.loop import training_loss

    torch.manual_seed(0)
    images, labels = phantom_batch(24, size=48, seed=0)
    test_images, test_labels = phantom_batch(4, size=48, seed=100)
    net = build_model(ModelConfig(variant="spinesegdiff", widths=(16, 32, 32), time_embed_dim=32))
    schedule = make_schedule("linear")
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.from_numpy(images)[:, None], torch.from_numpy(labels).long()
    for _ in range(300):
        batch = torch.randint(0, len(x), (8,), generator=generator)
        loss, _ = training_loss(net, x[batch], y[batch], schedule=schedule, prediction_type="sample",
                                generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    result = sample_segmentation(net, torch.from_numpy(test_images)[:, None], scheduler=DDIMScheduler(schedule),
                                 num_samples=3, num_steps=5, fuse_steps=3, generator=torch.Generator().manual_seed(1))
    dice = np.mean([dice_per_class(p, t) for p, t in zip(result.labels.numpy(), test_labels, strict=True)], axis=0)
    assert dice.mean() >= 0.8, dice


@pytest.mark.slow
def test_distributed_data_parallel_on_cpu(small_cache, tmp_path: Path) -> None:
    """Two processes under torchrun (Gloo backend) train one epoch; rank 0 writes the checkpoint."""
    import subprocess
    import sys

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"model": TINY_MODEL, "epochs": 1, "batch_size": 1, "val_steps": 2,
                                    "val_fuse_steps": 2, "val_samples": 1, "num_folds": 4, "threads": 1}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               "-m", "spinesegdiff", "train", "--data", str(small_cache.root), "--out", str(tmp_path / "ddp"),
               "--config", str(settings), "--device", "cpu", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = load_checkpoint(tmp_path / "ddp" / "last.pt")
    data = fold_data(TrainConfig.from_dict(saved["train_config"]).folds, small_cache)
    # each process draws batch_size slices per step: the epoch has half the steps of a single process
    assert saved["step"] == -(-len(data.train) // 2)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(small_cache, tmp_path: Path) -> None:
    whole = _config(small_cache.root, tmp_path / "whole")
    steps_per_epoch = -(-len(fold_data(whole.folds, small_cache).train) // 2)
    assert steps_per_epoch >= 3
    train(whole, progress=False)
    expected = load_checkpoint(tmp_path / "whole" / "last.pt")
    parts = _config(small_cache.root, tmp_path / "parts")
    train(parts, progress=False, stop_after_steps=1)  # stops within the first epoch
    train(parts, progress=False, resume=True, stop_after_steps=steps_per_epoch)  # and within the second
    stopped = load_checkpoint(tmp_path / "parts" / "last.pt")
    assert (stopped["epoch"], stopped["step_in_epoch"], len(stopped["epoch_losses"])) == (1, 1, 1)
    train(parts, progress=False, resume=True)
    resumed = load_checkpoint(tmp_path / "parts" / "last.pt")
    assert resumed["step"] == expected["step"] == 2 * steps_per_epoch and resumed["epoch"] == 2
    for key in ("model", "ema"):
        for name, value in expected[key].items():
            assert torch.equal(resumed[key][name], value), f"{key}: {name}"
    assert resumed["history"][-1] == {**expected["history"][-1], "minutes": resumed["history"][-1]["minutes"]}


def test_train_leaves_the_global_random_state_and_threads_alone(small_cache, tmp_path: Path) -> None:
    torch.manual_seed(123)
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    train(_config(small_cache.root, tmp_path / "run", threads=threads + 1), progress=False, stop_after_steps=1)
    assert torch.equal(torch.get_rng_state(), before) and torch.get_num_threads() == threads


def test_flat_and_nested_settings_read_alike() -> None:
    from spinesegdiff.training.config import SECTIONS

    flat = {"data": "d", "out": "o", "fold": 2, "num_folds": 4, "seed": 7, "epochs": 3, "schedule": "cosine",
            "val_steps": 4, "preseg_focus_timestep": 10, "device": "cpu", "variant": "unet",
            "augment": {"enabled": False}, "holdout_patients": ["3"]}
    config = TrainConfig.from_dict(flat)
    assert (config.folds.fold, config.folds.val_seed, config.optimisation.seed) == (2, 7, 7)
    assert config.scheduler.schedule == "cosine" and config.network.variant == "unet"
    assert not config.augment.enabled and config.folds.holdout_patients == ("3",)
    nested = json.loads(json.dumps(config.to_dict()))
    assert set(nested) == {"data", "out", *SECTIONS} and nested["optimisation"]["epochs"] == 3
    assert TrainConfig.from_dict(nested) == config


def test_unknown_and_invalid_settings_are_named() -> None:
    with pytest.raises(ValueError, match="unknown training settings: colour, epoch$"):
        TrainConfig.from_dict({"data": "d", "out": "o", "epoch": 3, "colour": 1})
    with pytest.raises(ValueError, match="unknown optimisation settings: fold"):
        TrainConfig.from_dict({"data": "d", "out": "o", "optimisation": {"fold": 1}})
    with pytest.raises(ValueError, match="preseg_max_timestep < num_train_timesteps"):
        TrainConfig.from_dict({"data": "d", "out": "o", "num_train_timesteps": 100})
    with pytest.raises(ValueError, match="need data and out"):
        TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(ValueError, match="fold must be -1"):
        TrainConfig.from_dict({"data": "d", "out": "o", "fold": 5})


def test_every_flag_names_a_flat_setting() -> None:
    from spinesegdiff.cli.train import _TRAIN_FLAGS

    assert set(_TRAIN_FLAGS.values()) <= set(FLAT_KEYS)
    assert FLAT_KEYS["seed"] == "optimisation" and FLAT_KEYS["schedule"] == "scheduler"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.json")), ids=lambda p: p.name)
def test_config_files_are_nested_and_load(path: Path) -> None:
    from spinesegdiff.training.config import SECTIONS

    assert set(json.loads(path.read_text(encoding="utf-8"))) <= set(SECTIONS)
    config = make_train_config(path, {"data": "d", "out": "o", "fold": "all", "seed": None})
    assert config.folds.fold == -1 and config.runtime.threads == 2 and config.optimisation.lr_schedule == "cosine"


def test_flags_override_a_nested_file(tmp_path: Path) -> None:
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.training.config import OptimisationSettings

    file = tmp_path / "settings.json"
    file.write_text(json.dumps({"optimisation": {"seed": 1, "epochs": 5}, "folds": {"fold": 1}}))
    config = make_train_config(file, {"data": "d", "out": "o", "seed": 4, "epochs": None,
                                      "holdout_patients": "3, 5"})
    assert config.optimisation == OptimisationSettings(seed=4, epochs=5) and config.folds.val_seed == 4
    assert config.folds.holdout_patients == ("3", "5") and config.folds.fold == 1
    with pytest.raises(SpineSegDiffError, match="invalid training settings: lr must be positive"):
        make_train_config(file, {"data": "d", "out": "o", "lr": -1.0})


def test_shipped_models_carry_their_scheduler() -> None:
    from spinesegdiff.assets import default_model_path, default_presegmenter_path, default_refiner_path

    expected = {default_model_path(): "linear", default_refiner_path(): "cosine", default_presegmenter_path(): "linear"}
    for path, kind in expected.items():
        payload = load_checkpoint(path)
        assert payload["scheduler"] == {"schedule": kind, "num_train_timesteps": 1000}, path.name
        assert TrainConfig.from_dict(payload["train_config"]).scheduler.schedule == kind  # the flat form reads
        assert all(v.dtype == torch.float16 for v in payload["ema"].values() if v.is_floating_point())


def _tiny_checkpoint(path: Path, **extra) -> Path:
    from spinesegdiff.models import ModelConfig, build_model

    config = ModelConfig.from_dict(TINY_MODEL)
    net = build_model(config)
    return save_checkpoint(path, {"model_config": config.to_dict(), "train_config": {"schedule": "linear"},
                                  "ema": net.state_dict(), "model": None, **extra})


def test_a_checkpoint_without_its_scheduler_is_refused(tmp_path: Path) -> None:
    from spinesegdiff.pipelines.segmenter import Segmenter

    path = _tiny_checkpoint(tmp_path / "old.pt")
    with pytest.raises(InputError, match="old.pt: has no scheduler configuration"):
        Segmenter.from_checkpoint(path, device="cpu", quiet=True)
    with pytest.raises(InputError, match="old.pt: has no scheduler configuration"):
        export_weights(path, tmp_path / "slim.pt")
    bad = _tiny_checkpoint(tmp_path / "bad.pt", scheduler={"schedule": "quadratic"})
    with pytest.raises(InputError, match="unreadable scheduler configuration"):
        Segmenter.from_checkpoint(bad, device="cpu", quiet=True)


def test_a_cosine_checkpoint_samples_with_cosine(tmp_path: Path) -> None:
    """The checkpoint's scheduler entry decides, not its (here stale) training settings."""
    from spinesegdiff.diffusion import SchedulerConfig, make_schedule
    from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter

    path = _tiny_checkpoint(tmp_path / "cosine.pt", scheduler={"schedule": "cosine", "num_train_timesteps": 1000})
    settings = SamplerSettings(num_samples=2, num_steps=3, fuse_steps=2, precision="fp32", backend="torch")
    segmenter = Segmenter.from_checkpoint(path, device="cpu", settings=settings, quiet=True)
    torch.testing.assert_close(segmenter.scheduler.schedule.alphas_cumprod, make_schedule("cosine").alphas_cumprod)
    image = np.random.default_rng(0).integers(0, 255, (1, 320, 320), dtype=np.uint8)
    sampled = segmenter.segment(image).probabilities
    net, config, _ = load_model(path)
    for kind, same in (("cosine", True), ("linear", False)):
        reference = Segmenter(net, config, None, device=torch.device("cpu"), settings=settings,
                              scheduler_config=SchedulerConfig(schedule=kind)).segment(image).probabilities
        assert np.array_equal(sampled, reference) == same, kind
    slim = export_weights(path, tmp_path / "slim.pt")
    assert load_checkpoint(slim)["scheduler"] == {"schedule": "cosine", "num_train_timesteps": 1000}


def test_learning_rate_schedules_by_hand() -> None:
    from spinesegdiff.training.lr_schedule import learning_rate

    assert learning_rate(0, 100, lr=1.0, schedule="constant", warmup_steps=4) == 0.25
    assert learning_rate(3, 100, lr=1.0, schedule="cosine", warmup_steps=4) == 1.0
    assert learning_rate(50, 100, lr=2.0, schedule="constant", warmup_steps=4) == 2.0
    assert learning_rate(4, 104, lr=1.0, schedule="cosine", warmup_steps=4) == pytest.approx(1.0)
    assert learning_rate(54, 104, lr=1.0, schedule="cosine", warmup_steps=4) == pytest.approx(0.02 + 0.98 * 0.5)
    assert learning_rate(104, 104, lr=1.0, schedule="cosine", warmup_steps=4) == pytest.approx(0.02)
    assert learning_rate(500, 104, lr=1.0, schedule="cosine", warmup_steps=4) == pytest.approx(0.02)


def test_high_noise_share_reaches_the_loss(small_cache, tmp_path: Path, monkeypatch) -> None:
    import spinesegdiff.training.loop as loop

    seen: list[torch.Tensor] = []
    original = loop.training_loss

    def recording_loss(*args, **kwargs):
        seen.append(kwargs.get("timesteps"))
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "training_loss", recording_loss)
    train(_config(small_cache.root, tmp_path / "noisy", high_noise_share=1.0, epochs=1),
          progress=False, stop_after_steps=3)
    assert len(seen) == 3 and all(t is not None and int(t.min()) >= 500 for t in seen)
    seen.clear()
    train(_config(small_cache.root, tmp_path / "plain", epochs=1), progress=False, stop_after_steps=2)
    assert seen == [None, None]  # uniform steps, drawn inside training_loss
