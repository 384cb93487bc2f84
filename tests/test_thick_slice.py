"""Thick-slice simulation (issue 13): a thin cached slice averaged with its same-series neighbours into a slab
3-4 mm thick, like the slices of 2D turbo spin-echo scans; its labels stay the centre slice's.

The synthetic caches fill every slice with one known value, a non-linear function of its index (a symmetric
average of a linear ramp would equal its centre and prove nothing), so a result's value tells which
neighbours were averaged with which weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spinesegdiff.data.augment import AugmentConfig, augment_batch, thick_slice, thick_slice_weights
from spinesegdiff.data.cache import SliceCache, SliceEntry
from spinesegdiff.data.io import Geometry
from spinesegdiff.data.preprocess import plan_grid
from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.training.batches import SliceNeighbours, run_neighbours, thick_slice_batch, training_batch
from spinesegdiff.training.config import TrainConfig, make_train_config
from spinesegdiff.training.validation import batch_tensors

REPO = Path(__file__).resolve().parents[1]
SIDE = 8
CPU = torch.device("cpu")


def _value_a(k: int) -> int:
    """Case ``1_t2`` (1 mm slices 0..6): 10, 15, 30, 55, 90, 135, 190."""
    return 10 + 5 * k * k


def _synthetic_cache() -> SliceCache:
    """Four series, every slice one constant value (labels: the slice's own pattern):

    * ``1_t2``: patient 1, slices 0..6, 1 mm apart, :func:`_value_a`;
    * ``1_t1``: the same patient's other series, slices 2..4 at 240 (never a neighbour of ``1_t2``'s slices);
    * ``2_t2``: patient 2, slices 0..2, 2 mm apart: 20, 60, 180;
    * ``3_t2``: patient 3, slices 0, 1, 3, 4, 5 (slice 2 missing), 1 mm apart: 100 + 10 k.
    """
    rows: list[tuple[str, str, float, int, int]] = []  # case, patient, spacing, slice index, value
    rows += [("1_t2", "1", 1.0, k, _value_a(k)) for k in range(7)]
    rows += [("1_t1", "1", 1.0, k, 240) for k in (2, 3, 4)]
    rows += [("2_t2", "2", 2.0, k, v) for k, v in zip(range(3), (20, 60, 180), strict=True)]
    rows += [("3_t2", "3", 1.0, k, 100 + 10 * k) for k in (0, 1, 3, 4, 5)]
    images = np.stack([np.full((SIDE, SIDE), v, dtype=np.uint8) for *_, v in rows])
    labels = np.zeros((len(rows), SIDE, SIDE), dtype=np.uint8)
    for i in range(len(rows)):
        labels[i, i % SIDE, :] = 1 + i % 3  # a different stripe on every slice
    entries = [SliceEntry(case=case, patient=patient, contrast=case.split("_")[1], slice_index=k, central=k == 3,
                          oblique=False, oblique_deg=0.0, image_path=f"{case}.mha", mask_path=None)
               for case, patient, _, k, _ in rows]
    spacing = {case: s for case, _, s, *_ in rows}
    grids = {case: plan_grid((7, 16, 16), Geometry(spacing=(0.5, 0.5, s), origin=(0.0, 0.0, 0.0),
                                                   direction=(0, 0, -1, 1, 0, 0, 0, -1, 0)))
             for case, s in spacing.items()}
    return SliceCache(root=Path("synthetic"), images=images, labels=labels, entries=entries, grids=grids)


def _index(cache: SliceCache, case: str, k: int) -> int:
    return next(i for i, e in enumerate(cache.entries) if e.case == case and e.slice_index == k)


def _thick_values(cache: SliceCache, indices: list[int], thickness: float, seed: int = 0,
                  p: float = 1.0) -> list[float]:
    """The constant value (0..255) of each slice after the thick-slice step, at a fixed thickness."""
    config = AugmentConfig(p_thick_slice=p, thick_slice_mm=(thickness, thickness))
    neighbours = SliceNeighbours.from_cache(cache, thickness)
    image = thick_slice_batch(cache, neighbours, indices, CPU, config, torch.Generator().manual_seed(seed))
    assert image.shape == (len(indices), 1, SIDE, SIDE) and image.dtype == torch.float32
    flat = image.flatten(1)
    assert torch.equal(flat.min(dim=1).values, flat.max(dim=1).values), "constant slices stay constant"
    return (flat[:, 0] * 255).tolist()


def test_weights_by_hand() -> None:
    def weights(thickness: float, spacing: float = 1.0, reach: int = 2, radius: int = 2) -> list[float]:
        return thick_slice_weights(torch.tensor([thickness]), torch.tensor([spacing]), torch.tensor([reach]),
                                   radius)[0].tolist()

    assert weights(3.0) == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 0])
    assert weights(2.0) == pytest.approx([0, 0.25, 0.5, 0.25, 0])  # partial weights: half of each neighbour
    assert weights(2.5) == pytest.approx([0, 0.3, 0.4, 0.3, 0])
    assert weights(4.0) == pytest.approx([0.125, 0.25, 0.25, 0.25, 0.125])
    assert weights(4.0, reach=1) == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 0]), "narrowed to 3 mm, centred"
    assert weights(4.0, reach=0) == [0, 0, 1, 0, 0]
    assert weights(0.5) == [0, 0, 1, 0, 0], "a slab thinner than the slices: the slice itself"
    assert weights(3.0, spacing=2.0, radius=1) == pytest.approx([0.5 / 3, 2 / 3, 0.5 / 3])
    both = thick_slice_weights(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.0]), torch.tensor([1, 1]), 1)
    expected = torch.tensor([[0.25, 0.5, 0.25], [0.5 / 3, 2 / 3, 0.5 / 3]])
    assert torch.allclose(both, expected), "each row its own thickness and spacing"


def test_neighbours_are_the_same_series_by_slice_index() -> None:
    cache = _synthetic_cache()
    neighbours = SliceNeighbours.from_cache(cache, 4.0)
    assert neighbours.radius == 2  # 1 mm slices: a 4 mm slab reaches 2 slices on each side (by half)
    a = [_index(cache, "1_t2", k) for k in range(7)]
    assert neighbours.table[a[3]].tolist() == a[1:6]
    assert neighbours.table[a[0]].tolist() == [-1, -1, *a[:3]]
    assert neighbours.reach[a].tolist() == [0, 1, 2, 2, 2, 1, 0]
    t1 = [_index(cache, "1_t1", k) for k in (2, 3, 4)]
    assert neighbours.table[t1[1]].tolist() == [-1, *t1, -1], "the patient's other series is not a neighbour"
    assert neighbours.reach[t1].tolist() == [0, 1, 0]
    gap = [_index(cache, "3_t2", k) for k in (0, 1, 3, 4, 5)]
    assert neighbours.reach[gap].tolist() == [0, 0, 0, 1, 0], "no neighbours across a missing slice"
    two_mm = [_index(cache, "2_t2", k) for k in range(3)]
    assert neighbours.spacing_mm[two_mm].tolist() == [2.0, 2.0, 2.0] and neighbours.spacing_mm[a[0]] == 1.0
    assert SliceNeighbours.from_cache(cache, 3.0).radius == 1 and SliceNeighbours.from_cache(cache, 1.0).radius == 0


def test_thick_slices_average_the_right_neighbours_with_the_right_weights() -> None:
    cache = _synthetic_cache()
    a = [_index(cache, "1_t2", k) for k in range(7)]
    assert _thick_values(cache, [a[3]], 3.0) == pytest.approx([(30 + 55 + 90) / 3], abs=1e-3)
    assert _thick_values(cache, [a[3]], 2.0) == pytest.approx([0.25 * 30 + 0.5 * 55 + 0.25 * 90], abs=1e-3)
    four = _thick_values(cache, a, 4.0)
    assert four == pytest.approx([
        10,  # no neighbour below: as it was
        (10 + 15 + 30) / 3,  # one below: narrowed to 3 mm
        (0.5 * 10 + 15 + 30 + 55 + 0.5 * 90) / 4,
        (0.5 * 15 + 30 + 55 + 90 + 0.5 * 135) / 4,
        (0.5 * 30 + 55 + 90 + 135 + 0.5 * 190) / 4,
        (90 + 135 + 190) / 3,
        190,
    ], abs=1e-3)
    t1 = _index(cache, "1_t1", 3)
    assert _thick_values(cache, [t1, a[3]], 3.0) == pytest.approx([240, (30 + 55 + 90) / 3], abs=1e-3)
    two_mm = _index(cache, "2_t2", 1)
    assert _thick_values(cache, [two_mm], 4.0) == pytest.approx([0.25 * 20 + 0.5 * 60 + 0.25 * 180], abs=1e-3)
    gap = [_index(cache, "3_t2", k) for k in (3, 4)]
    assert _thick_values(cache, gap, 4.0) == pytest.approx([130, 140], abs=1e-3), "4: 3..5 (narrowed)"


def test_thickness_is_drawn_from_the_range_and_the_chance_from_p() -> None:
    cache = _synthetic_cache()
    middle = _index(cache, "1_t2", 3)
    config = AugmentConfig(p_thick_slice=1.0, thick_slice_mm=(2.0, 4.0))
    neighbours = SliceNeighbours.from_cache(cache, 4.0)
    values = [float(thick_slice_batch(cache, neighbours, [middle], CPU, config,
                                      torch.Generator().manual_seed(seed))[0, 0, 0, 0]) * 255 for seed in range(16)]
    assert all(57.5 - 1e-3 <= v <= 62.5 + 1e-3 for v in values)  # 2 mm: 57.5 ... 4 mm: 62.5
    assert len({round(v, 3) for v in values}) > 8, "a new thickness every draw"
    again = thick_slice_batch(cache, neighbours, [middle], CPU, config, torch.Generator().manual_seed(3))
    assert float(again[0, 0, 0, 0]) * 255 == values[3], "the generator decides"
    changed = np.asarray(_thick_values(cache, [middle] * 200, 3.0, p=0.5)) != 55
    assert 60 < changed.sum() < 140
    assert _thick_values(cache, [middle] * 20, 3.0, p=0.0) == [55] * 20


def test_labels_stay_the_centre_slices() -> None:
    cache = _synthetic_cache()
    indices = [_index(cache, "1_t2", k) for k in range(7)]
    config = AugmentConfig(p_thick_slice=1.0, thick_slice_mm=(4.0, 4.0), p_spatial=0.0, p_gamma=0.0, p_remap=0.0,
                           p_inversion=0.0, p_bias=0.0, p_noise=0.0)
    image, labels = training_batch(cache, indices, CPU, config, torch.Generator().manual_seed(0),
                                   SliceNeighbours.from_cache(cache, 4.0))
    assert torch.equal(labels, torch.from_numpy(cache.labels[indices].astype(np.int64)))
    assert float(image[3].mean()) * 255 == pytest.approx(62.5, abs=0.05), "and the image is thick"


def test_thick_slices_come_first_then_the_other_augmentation() -> None:
    cache = _synthetic_cache()
    indices = [_index(cache, "1_t2", k) for k in (1, 3, 4)]
    config = AugmentConfig(p_thick_slice=1.0, p_spatial=1.0, p_gamma=1.0, p_noise=1.0)
    neighbours = SliceNeighbours.from_cache(cache, 4.0)
    image, labels = training_batch(cache, indices, CPU, config, torch.Generator().manual_seed(7), neighbours)
    generator = torch.Generator().manual_seed(7)
    thick = thick_slice_batch(cache, neighbours, indices, CPU, config, generator)
    expected, expected_labels = augment_batch(thick, batch_tensors(cache, indices, CPU)[1], config, generator)
    assert torch.equal(image, expected) and torch.equal(labels, expected_labels)


def test_off_leaves_batches_bit_identical() -> None:
    cache = _synthetic_cache()
    indices = [_index(cache, "1_t2", k) for k in (2, 3, 4)]
    neighbours = SliceNeighbours.from_cache(cache, 4.0)
    for config in (AugmentConfig(), AugmentConfig(p_thick_slice=0.0, p_label_contrast=0.5),
                   AugmentConfig(enabled=False, p_thick_slice=1.0)):
        generator = torch.Generator().manual_seed(11)
        image, labels = training_batch(cache, indices, CPU, config, generator, neighbours)
        plain_generator = torch.Generator().manual_seed(11)
        plain = augment_batch(*batch_tensors(cache, indices, CPU), config, plain_generator)
        assert torch.equal(image, plain[0]) and torch.equal(labels, plain[1])
        assert torch.equal(generator.get_state(), plain_generator.get_state()), "nothing more drawn"
        assert run_neighbours(cache, config) is None, "and a run builds no neighbour table"
    table = run_neighbours(cache, AugmentConfig(p_thick_slice=0.5, thick_slice_mm=(2.0, 4.0)))
    assert table is not None and table.radius == 2, "reaching as far as the thickest slab"


def test_slices_without_neighbours_are_unchanged() -> None:
    full = _synthetic_cache()
    central = [i for i, e in enumerate(full.entries) if e.central]
    cache = SliceCache(root=full.root, images=full.images[central], labels=full.labels[central],
                       entries=[full.entries[i] for i in central], grids=full.grids)
    neighbours = SliceNeighbours.from_cache(cache, 4.0)
    assert neighbours.reach.tolist() == [0] * len(central)
    indices = list(range(len(central)))
    config = AugmentConfig(p_thick_slice=1.0)
    image = thick_slice_batch(cache, neighbours, indices, CPU, config, torch.Generator().manual_seed(0))
    assert torch.equal(image, batch_tensors(cache, indices, CPU)[0])
    stack = torch.rand(3, 5, SIDE, SIDE)
    stack[[0, 2]] = torch.where(torch.arange(5)[:, None, None] == 2, stack[[0, 2]], float("nan"))  # none there
    kept = thick_slice(stack, torch.ones(3), torch.tensor([0, 2, 0]), config, torch.Generator().manual_seed(0))
    assert torch.equal(kept[[0, 2]], stack[[0, 2], 2:3]) and not torch.equal(kept[1], stack[1, 2:3])


def test_settings_are_checked() -> None:
    for bad in ({"p_thick_slice": -0.1}, {"p_thick_slice": 1.5}, {"thick_slice_mm": (0.0, 3.0)},
                {"thick_slice_mm": (4.0, 2.0)}, {"thick_slice_mm": (3.0,)}, {"thick_slice_mm": (1.0, 2.0, 3.0)},
                {"thick_slice_mm": (2.0, float("inf"))}, {"thick_slice_mm": (float("nan"), 2.0)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AugmentConfig(**bad)
    config = AugmentConfig(p_thick_slice=1.0, thick_slice_mm=[3, 3])
    assert config.thick_slice_mm == (3, 3) and AugmentConfig().p_thick_slice == 0.0
    nested = TrainConfig.from_dict({"data": "d", "out": "o", "augment": {"p_thick_slice": 0.25,
                                                                         "thick_slice_mm": [2.5, 3.5]}})
    assert nested.augment.p_thick_slice == 0.25 and nested.augment.thick_slice_mm == (2.5, 3.5)
    assert TrainConfig.from_dict(nested.to_dict()) == nested
    with pytest.raises(ValueError, match="p_thick_slice must lie in"):
        TrainConfig.from_dict({"data": "d", "out": "o", "augment": {"p_thick_slice": 2}})


def test_the_thick_config_is_the_general_one_with_thick_slices() -> None:
    import json

    thick = json.loads((REPO / "configs" / "unet-cpu-thick.json").read_text(encoding="utf-8"))
    general = json.loads((REPO / "configs" / "unet-cpu-general.json").read_text(encoding="utf-8"))
    added = {"p_thick_slice": 0.5, "thick_slice_mm": [2.0, 4.0]}
    assert thick == {**general, "augment": {**general["augment"], **added}}
    config = make_train_config(REPO / "configs" / "unet-cpu-thick.json", {"data": "d", "out": "o"})
    assert config.augment.p_thick_slice == 0.5 and config.augment.thick_slice_mm == (2.0, 4.0)
    with pytest.raises(SpineSegDiffError, match="thick_slice_mm"):
        make_train_config(REPO / "configs" / "unet-cpu-thick.json",
                          {"data": "d", "out": "o", "augment": {"thick_slice_mm": [5, 1]}})


def test_a_run_trains_on_thick_slices(small_cache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spinesegdiff.training import batches
    from spinesegdiff.training.loop import train

    calls: list[np.ndarray] = []

    def recording(cache, neighbours, indices, *args):
        calls.append(neighbours.reach[np.asarray(indices)])
        return thick_slice_batch(cache, neighbours, indices, *args)

    monkeypatch.setattr(batches, "thick_slice_batch", recording)
    config = TrainConfig.from_dict({
        "data": str(small_cache.root), "out": str(tmp_path / "run"), "epochs": 1, "batch_size": 2,
        "val_fraction": 0.0, "num_folds": 4, "fold": 1,
        "model": {"variant": "unet", "widths": [4, 8], "time_embed_dim": 16},
        "augment": {"p_thick_slice": 1.0, "thick_slice_mm": [3.0, 3.0]}})
    train(config, progress=False, stop_after_steps=1)
    assert len(calls) == 1 and len(calls[0]) == 2, "the loop's batch went through the thick-slice step"
