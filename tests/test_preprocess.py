from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from spinesegdiff.data.io import Geometry, read_image
from spinesegdiff.data.labels import to_classes
from spinesegdiff.data.phantom import PIR_DIRECTION, make_phantom
from spinesegdiff.data.preprocess import (
    Reorientation,
    SagittalGrid,
    native_slice,
    normalise_intensity,
    plan_grid,
    prepare_scan,
    restore_labels,
    restore_probabilities,
    slices_to_volume,
    soft_labels_to_model,
)
from spinesegdiff.errors import InputError


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def _direction(perm: tuple[int, ...], signs: tuple[int, ...]) -> np.ndarray:
    matrix = np.zeros((3, 3))
    for axis, (world, sign) in enumerate(zip(perm, signs, strict=True)):
        matrix[world, axis] = sign
    return matrix


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("signs", list(itertools.product((1, -1), repeat=3)))
def test_reorientation_reaches_ras_and_inverts(perm, signs) -> None:
    direction = _direction(perm, signs)
    reorientation = Reorientation.from_direction(direction)
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (z, y, x)
    ras = reorientation.to_ras(volume)
    np.testing.assert_array_equal(reorientation.from_ras(ras), volume)
    # the RAS array steps along +R, +A, +S in world space: compare the index -> world maps
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    for k in range(3):
        native_axis = reorientation.native_axis[k]
        world = lps_to_ras @ direction[:, native_axis]
        expected = -1 if reorientation.flipped[k] else 1
        assert world[k] == expected
    assert sorted(ras.shape) == sorted(volume.shape)


def test_reorientation_with_channels() -> None:
    reorientation = Reorientation.from_direction(np.asarray(PIR_DIRECTION).reshape(3, 3))
    volume = np.random.default_rng(0).random((2, 3, 4, 5))
    np.testing.assert_array_equal(reorientation.from_ras(reorientation.to_ras(volume)), volume)
    np.testing.assert_array_equal(reorientation.to_ras(volume)[1], reorientation.to_ras(volume[1]))


def test_pir_grid_matches_the_native_view() -> None:
    phantom = make_phantom(shape=(5, 120, 90), spacing=(1.0, 1.0, 3.0))
    grid = plan_grid(phantom.image.shape, phantom.geometry)
    assert grid.plane == "sagittal" and grid.oblique_deg == pytest.approx(0.0)
    assert grid.num_sagittal == 5 and grid.central_index == 2
    # PIR: the radiological view (rows superior->inferior, cols anterior->posterior) is the native slice
    np.testing.assert_array_equal(native_slice(phantom.labels, grid, 2), phantom.labels[2])
    with pytest.raises(IndexError):
        native_slice(phantom.labels, grid, 5)


def test_grid_dict_round_trip() -> None:
    phantom = make_phantom(shape=(3, 64, 48))
    grid = plan_grid(phantom.image.shape, phantom.geometry)
    assert SagittalGrid.from_dict(grid.to_dict()) == grid


def test_model_grid_centres_the_field_of_view() -> None:
    phantom = make_phantom(shape=(3, 100, 80), spacing=(2.0, 2.0, 3.0))  # 160 x 200 mm
    prepared = prepare_scan(phantom.image, phantom.geometry, classes_zyx=phantom.labels)
    assert prepared.images.shape == (1, 320, 320) and prepared.images.dtype == np.uint8
    assert prepared.labels.shape == (1, 320, 320)
    rows, cols = np.nonzero(prepared.images[0] > 0)
    assert rows.min() == pytest.approx(60, abs=1) and rows.max() == pytest.approx(259, abs=1)
    assert cols.min() == pytest.approx(80, abs=1) and cols.max() == pytest.approx(239, abs=1)
    assert set(np.unique(prepared.labels)) <= {0, 1, 2, 3}


def test_exact_inverse_at_native_spacing_on_an_oblique_phantom() -> None:
    phantom = make_phantom(shape=(4, 90, 70), spacing=(1.0, 1.0, 2.0))
    rotation = np.linalg.qr(np.array([[1.0, 0.08, 0.05], [-0.07, 1.0, 0.1], [0.04, -0.1, 1.0]]))[0]
    rotation *= np.sign(np.diag(rotation))
    direction = (rotation @ np.asarray(PIR_DIRECTION).reshape(3, 3)).ravel()
    geometry = Geometry(phantom.geometry.spacing, (3.0, -2.0, 1.0), tuple(direction))
    grid = plan_grid(phantom.labels.shape, geometry, model_size=128, model_spacing=1.0)
    assert 0 < grid.oblique_deg < 15
    from spinesegdiff.data.preprocess import labels_to_model

    indices = list(range(grid.num_sagittal))
    model = [labels_to_model(native_slice(phantom.labels, grid, i), grid) for i in indices]
    back = slices_to_volume(np.stack([restore_labels(m, grid) for m in model]), indices, grid)
    np.testing.assert_array_equal(back, phantom.labels)


def _real_cases(spider_subset: Path, count: int | None = None):
    images = sorted((spider_subset / "images").glob("*.mha"))
    return images if count is None else images[:count]


@pytest.mark.slow
def test_real_masks_round_trip(spider_subset: Path) -> None:
    """Every shared mask: exact at native spacing; at 1 mm the probability path keeps Dice >= 0.99 on average."""
    soft_dice, nearest_dice = [], []
    for image_path in _real_cases(spider_subset):
        volume, geometry = read_image(image_path)
        classes = to_classes(read_image(spider_subset / "masks" / image_path.name)[0])
        # (1) exact inverse: model grid at the native in-plane spacing
        fine = plan_grid(volume.shape, geometry, model_size=704, model_spacing=geometry.spacing[0])
        from spinesegdiff.data.preprocess import labels_to_model

        indices = list(range(fine.num_sagittal))
        restored = [
            restore_labels(labels_to_model(native_slice(classes, fine, i), fine), fine) for i in indices
        ]
        back = slices_to_volume(np.stack(restored), indices, fine)
        np.testing.assert_array_equal(back, classes, err_msg=image_path.name)
        # (2) the paper's 1 mm, 320 x 320 grid, central slice
        prepared = prepare_scan(volume, geometry, classes_zyx=classes)
        grid, index = prepared.grid, prepared.indices[0]
        truth = native_slice(classes, grid, index)
        soft = restore_probabilities(soft_labels_to_model(truth, grid), grid).argmax(0)
        nearest = restore_labels(prepared.labels[0], grid)
        soft_dice.append([dice(soft == k, truth == k) for k in (1, 2, 3)])
        nearest_dice.append([dice(nearest == k, truth == k) for k in (1, 2, 3)])
        volume_back = slices_to_volume(nearest[None], [index], grid)
        assert volume_back.shape == classes.shape
    soft_dice, nearest_dice = np.asarray(soft_dice), np.asarray(nearest_dice)
    assert soft_dice.mean(axis=0).min() >= 0.99, soft_dice.mean(axis=0)
    assert soft_dice.min() >= 0.95, soft_dice.min(axis=0)
    assert nearest_dice.min() >= 0.9, nearest_dice.min(axis=0)


def test_normalisation_range_and_errors() -> None:
    volume = np.linspace(0, 100, 1000).reshape(10, 10, 10)
    scaled = normalise_intensity(volume)
    assert scaled.min() == 0 and scaled.max() == 255
    assert scaled.dtype == np.float32
    assert np.isclose(scaled.ravel()[490], 255 * volume.ravel()[490] / np.percentile(volume, 98))
    bad = volume.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="scan.mha: image holds NaN"):
        normalise_intensity(bad, source="scan.mha")
    with pytest.raises(InputError, match="image is constant"):
        normalise_intensity(np.full((3, 3, 3), 7.0), source="scan.mha")


def test_axial_scan_is_refused() -> None:
    phantom = make_phantom(shape=(5, 64, 64), spacing=(0.8, 0.8, 1.0))
    axial = Geometry((0.8, 0.8, 4.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    with pytest.raises(InputError, match="ax.nii.gz: scan is axial, not sagittal"):
        prepare_scan(phantom.image, axial, source="ax.nii.gz")
    isotropic = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert prepare_scan(phantom.image, isotropic).grid.plane == "isotropic"


def test_all_slices_and_probability_restore() -> None:
    phantom = make_phantom(shape=(3, 100, 80), spacing=(1.5, 1.5, 3.0))
    prepared = prepare_scan(phantom.image, phantom.geometry, classes_zyx=phantom.labels, slices="all")
    assert prepared.indices == [0, 1, 2]
    probabilities = np.zeros((4, 320, 320), np.float32)
    probabilities[0] = 1.0
    restored = restore_probabilities(probabilities, prepared.grid)
    assert restored.shape == (4, 100, 80)
    np.testing.assert_allclose(restored.sum(axis=0), 1.0, atol=1e-5)
