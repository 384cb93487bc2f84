"""The 3D systems in ``spinesegdiff evaluate``: each held-out scan's sagittal slab goes to the system, and the
prediction of its central slice is scored beside the 2D systems'. nnU-Net 3d is replaced by an oracle here (its
own tests train a real one); the plumbing is what is tested: which slab, which slice, which order."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from spinesegdiff.data.cache import build_cache
from spinesegdiff.data.slabs import slabs_from_cache
from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.evaluation.runner import run_evaluation
from spinesegdiff.evaluation.systems import SystemSpec, needs_slabs
from spinesegdiff.models import ModelConfig
from spinesegdiff.training.loop import TrainConfig, train

TINY = ModelConfig(variant="unet", widths=(8, 8, 16), time_embed_dim=32, patch_size=2)
NNUNET_3D = "nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.fixture
def caches(make_spider_folder, tmp_path: Path):
    """The same six phantom scans as a cache of central slices and as a cache of all (3) slices."""
    root = make_spider_folder([(str(p), "t2") for p in range(1, 7)], shape=(3, 96, 80))
    central = build_cache(root, tmp_path / "central", progress=False)
    every = build_cache(root, tmp_path / "all", slices="all", progress=False)
    return central, every


def _unet_run(cache_root: Path, out: Path, model: dict | None = None) -> Path:
    config = TrainConfig.from_dict({
        "data": str(cache_root), "out": str(out), "model": model or TINY.to_dict(), "epochs": 1, "batch_size": 2,
        "num_folds": 3, "fold": 2, "val_fraction": 0.25, "val_samples": 1, "val_steps": 1, "val_fuse_steps": 1})
    return train(config, progress=False, stop_after_steps=1)


class OracleSlabSegmenter:
    """Stands in for nnU-Net 3d: returns the one-hot truth of the slab's slice ``central + offset``."""

    offset = 0
    calls: ClassVar[list[tuple[tuple[int, ...], list[int]]]] = []

    def __init__(self, folder, *, fold, device) -> None:
        self.truth = {image.tobytes(): label for image, label in zip(self.slabs.images, self.slabs.labels,
                                                                     strict=True)}

    def __call__(self, images: np.ndarray, central: np.ndarray) -> np.ndarray:
        type(self).calls.append((images.shape, central.tolist()))
        labels = np.stack([self.truth[slab.tobytes()][c + self.offset] for slab, c in zip(images, central,
                                                                                          strict=True)])
        return np.stack([labels == k for k in range(4)], axis=1).astype(np.float32)


def test_a_3d_folder_needs_slabs_and_a_2d_one_does_not(tmp_path: Path) -> None:
    assert needs_slabs(SystemSpec.parse(f"N3=nnunet:{tmp_path / NNUNET_3D}"))
    assert not needs_slabs(SystemSpec.parse(f"N2=nnunet:{tmp_path / 'nnUNetTrainer__nnUNetPlans__2d'}"))


@pytest.mark.parametrize("offset", [0, 1])
def test_a_slab_system_is_scored_on_the_central_slice_of_each_held_out_scan(caches, tmp_path: Path, monkeypatch,
                                                                            offset: int) -> None:
    """The oracle of the central slice scores Dice 1 on every held-out case; one reading the slice beside it
    does not (so the central index, the case order and the scoring are all checked)."""
    import spinesegdiff.pipelines.nnunet as nnunet_pipeline

    central, every = caches
    run = _unet_run(central.root, tmp_path / "run")
    OracleSlabSegmenter.slabs = slabs_from_cache(every)
    OracleSlabSegmenter.offset = -1 if offset else 0
    OracleSlabSegmenter.calls = []
    monkeypatch.setattr(nnunet_pipeline, "NnUNetSlabSegmenter", OracleSlabSegmenter)
    folder = tmp_path / NNUNET_3D
    out = tmp_path / "report"
    run_evaluation([SystemSpec.parse(f"U-Net={run}"), SystemSpec.parse(f"nnU-Net 3D=nnunet:{folder}")], out,
                   quiet=True, slab_cache=every.root)
    (shape, centres), = OracleSlabSegmenter.calls
    assert shape == (2, 3, 320, 320) and centres == [1, 1]
    with (out / "cases.csv").open(encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if row["system"] == "nnU-Net 3D"]
    assert len(rows) == 2
    dice = [float(row[f"dice_{key}"]) for row in rows for key in ("SC", "VB", "IVD")]
    if offset:
        assert min(dice) < 0.99
    else:
        assert dice == pytest.approx([1.0] * 6)


def test_a_slab_system_without_a_slab_cache_is_refused_in_one_line(caches, tmp_path: Path) -> None:
    central, _ = caches
    run = _unet_run(central.root, tmp_path / "run")
    specs = [SystemSpec.parse(f"U-Net={run}"), SystemSpec.parse(f"N3=nnunet:{tmp_path / NNUNET_3D}")]
    with pytest.raises(SpineSegDiffError, match="--slab-cache"):
        run_evaluation(specs, tmp_path / "report", quiet=True)


def test_slabs_whose_central_slices_differ_from_the_evaluated_slices_are_refused(caches, tmp_path: Path,
                                                                                 make_spider_folder) -> None:
    central, _ = caches
    other_root = make_spider_folder([(str(p), "t2") for p in range(1, 7)], name="other", shape=(4, 96, 80))
    other = build_cache(other_root, tmp_path / "other-all", slices="all", progress=False)
    run = _unet_run(central.root, tmp_path / "run")
    specs = [SystemSpec.parse(f"U-Net={run}"), SystemSpec.parse(f"N3=nnunet:{tmp_path / NNUNET_3D}")]
    with pytest.raises(SpineSegDiffError, match="central slices differ"):
        run_evaluation(specs, tmp_path / "report", quiet=True, slab_cache=other.root)


def test_a_diffunet3d_run_samples_the_slabs_of_its_own_training_cache(caches, tmp_path: Path) -> None:
    """Without --slab-cache, a Diff-UNet 3D run's slabs come from the cache it was trained on; its predictions
    are the held-out cases' central slices, sampled with the evaluation's sampler settings."""
    import json

    from spinesegdiff.pipelines.segmenter import SamplerSettings

    central, every = caches
    unet = _unet_run(central.root, tmp_path / "unet")
    slab_run = _unet_run(every.root, tmp_path / "d3", model={"variant": "diffunet3d", "widths": [4, 8],
                                                              "time_embed_dim": 16})
    out = tmp_path / "report"
    run_evaluation([SystemSpec.parse(f"U-Net={unet}"), SystemSpec.parse(f"Diff-UNet 3D={slab_run}")], out,
                   quiet=True, settings=SamplerSettings(num_samples=2, num_steps=2, fuse_steps=1))
    meta = json.loads((out / "predictions" / "Diff-UNet 3D.json").read_text(encoding="utf-8"))
    unet_meta = json.loads((out / "predictions" / "U-Net.json").read_text(encoding="utf-8"))
    assert meta["cases"] == unet_meta["cases"] and len(meta["cases"]) == 2
    assert meta["description"]["sampler"] == {"num_samples": 2, "num_steps": 2, "fuse_steps": 1, "seed": 0}
    arrays = np.load(out / "predictions" / "Diff-UNet 3D.npz")
    assert arrays["class_probabilities"].shape == (2, 4, 320, 320)
    np.testing.assert_allclose(arrays["class_probabilities"].astype(np.float32).sum(axis=1), 1.0, atol=2e-3)
