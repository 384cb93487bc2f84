"""Exact contracts of the core data path, worked out by hand: resampling positions, fills, dtypes, boundaries.

Each test here was written against a mutant that the rest of the suite let live (``mutmut``, docs/TESTING.md):
a changed interpolation order, a dropped dtype, a ``<`` turned ``<=``, an error that names the wrong file.
"""

from __future__ import annotations

import numpy as np
import pytest

from spinesegdiff.data.io import Geometry
from spinesegdiff.data.labels import to_classes
from spinesegdiff.data.preprocess import (
    SagittalGrid,
    acquisition_plane,
    image_to_model,
    labels_to_model,
    native_slice,
    normalise_intensity,
    plan_grid,
    prepare_scan,
    restore_labels,
    restore_probabilities,
    select_slices,
    slices_to_volume,
)
from spinesegdiff.errors import InputError
from spinesegdiff.evaluation.metrics import dice_per_class, dice_score

# a sagittal series laid out like SPIDER's: ITK x runs anterior -> posterior, y superior -> inferior, z to the right
PIR = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def _grid(shape_zyx=(3, 700, 500), spacing=(0.6, 0.55, 3.0)) -> SagittalGrid:
    return plan_grid(shape_zyx, Geometry(spacing=spacing, origin=(0.0, 0.0, 0.0), direction=PIR))


# --- resampling: positions by hand ---------------------------------------------------------------------------


def test_image_to_model_samples_linearly_at_the_documented_positions() -> None:
    grid = _grid()
    rows, cols = grid.rows.native_size, grid.cols.native_size
    step = np.zeros((rows, cols), dtype=np.int16)  # an integer input must still come back as float32
    step[rows // 2:, :] = 100
    model = image_to_model(step, grid)
    assert model.dtype == np.float32 and model.shape == (320, 320)
    positions = grid.rows.scale * np.arange(320) + grid.rows.offset  # native row sampled by each model row
    expected = np.interp(positions, np.arange(rows), step[:, 0].astype(float), left=0.0, right=0.0)
    np.testing.assert_allclose(model[:, 160], expected, atol=1e-4)


def test_restore_probabilities_inverts_the_positions_and_fills_outside_the_field_of_view() -> None:
    grid = _grid(shape_zyx=(3, 700, 650))  # 650 x 0.55 mm = 357 mm of rows: more than the 320 mm model grid
    ramp = np.tile(np.linspace(0.0, 1.0, 320, dtype=np.float32)[:, None], (1, 320))
    restored = restore_probabilities(np.stack([ramp, 1.0 - ramp]), grid)
    assert restored.dtype == np.float32 and restored.shape == (2, grid.rows.native_size, grid.cols.native_size)
    model_position = (np.arange(grid.rows.native_size) - grid.rows.offset) / grid.rows.scale
    inside = (model_position >= 0) & (model_position <= 319)
    expected = np.interp(model_position[inside], np.arange(320), ramp[:, 0])
    column = grid.cols.native_size // 2
    np.testing.assert_allclose(restored[0, inside, column], expected, atol=1e-5)
    outside = model_position < -1  # beyond the model grid: background certain, other classes 0
    assert outside.any()
    assert np.all(restored[0, outside, column] == 1.0) and np.all(restored[1, outside, column] == 0.0)
    unfilled = restore_probabilities(np.stack([ramp, 1.0 - ramp]), grid, background_channel=None)
    assert np.all(unfilled[:, outside, column] == 0.0)
    other = restore_probabilities(np.stack([ramp, 1.0 - ramp]), grid, background_channel=1)
    assert np.all(other[0, outside, column] == 0.0) and np.all(other[1, outside, column] == 1.0)


def test_label_maps_are_resampled_by_nearest_neighbour_only() -> None:
    grid = _grid()
    rows, cols = grid.rows.native_size, grid.cols.native_size
    blocks = np.where((np.arange(rows)[:, None] // 7 + np.arange(cols)[None, :] // 5) % 2 == 0, 0, 3)
    model = labels_to_model(blocks.astype(np.int64), grid)
    assert model.dtype == np.uint8 and set(np.unique(model)) == {0, 3}  # linear sampling would make 1s and 2s
    back = restore_labels(model.astype(np.int64), grid)
    assert back.dtype == np.uint8 and set(np.unique(back)) == {0, 3}
    assert back.shape == (rows, cols)


# --- slices and volumes ------------------------------------------------------------------------------------


def test_slices_go_back_to_their_places_with_channels_and_fill() -> None:
    grid = _grid(shape_zyx=(3, 6, 4))
    views = np.arange(2 * 3 * 4 * 6, dtype=np.uint8).reshape(2, 3, 6, 4)  # (N, C, S, A) views
    volume = slices_to_volume(views, [0, 2], grid)
    assert volume.dtype == np.uint8 and volume.shape == (3, 3, 6, 4)  # (C, z, y, x)
    for n, index in enumerate((0, 2)):
        for channel in range(3):
            np.testing.assert_array_equal(native_slice(volume[channel], grid, index), views[n, channel])
            np.testing.assert_array_equal(native_slice(volume, grid, index)[channel], views[n, channel])
    assert np.all(native_slice(volume, grid, 1) == 0)  # a slice not given is background
    with pytest.raises(ValueError, match="zip"):
        slices_to_volume(views, [0], grid)


def test_slice_indices_are_checked_at_both_ends() -> None:
    grid = _grid(shape_zyx=(3, 6, 4))
    assert select_slices(grid, [0, 2]) == [0, 2] and select_slices(grid, (np.int64(1),)) == [1]
    for bad in (-1, 3):
        with pytest.raises(IndexError, match=rf"sagittal slice {bad} out of range 0\.\.2"):
            select_slices(grid, [bad])
    with pytest.raises(IndexError, match=r"sagittal slice 3 out of range 0\.\.2"):
        native_slice(np.zeros((3, 6, 4)), grid, 3)


# --- planes and grids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spacing", "plane"), [
    ((1.0, 1.0, 1.2), "isotropic"),   # 1.2 < 1.25 x the finest side
    ((1.0, 1.0, 1.25), "sagittal"),   # exactly 1.25: anisotropic
    ((0.5, 0.5, 0.7), "sagittal"),
    ((0.5, 3.0, 0.5), "axial"),       # ITK y runs superior-inferior in this layout: thick along S
    ((3.0, 0.5, 0.5), "coronal"),     # ITK x runs anterior-posterior: thick along A
])
def test_acquisition_plane_reads_the_coarsest_axis(spacing, plane) -> None:
    grid = _grid(shape_zyx=(4, 6, 5), spacing=spacing)
    assert acquisition_plane(grid.geometry, grid.reorientation) == plane


def test_a_coronal_scan_is_refused_by_name() -> None:
    geometry = Geometry(spacing=(3.0, 0.5, 0.5), origin=(0.0, 0.0, 0.0), direction=PIR)
    volume = np.random.default_rng(0).random((100, 100, 12)).astype(np.float32)
    with pytest.raises(InputError, match=r"scan\.mha: scan is coronal, not sagittal"):
        prepare_scan(volume, geometry, source="scan.mha")


def test_plan_grid_needs_3d_shapes_and_3d_geometry_and_keeps_the_model_spacing() -> None:
    geometry = Geometry(spacing=(0.6, 0.55, 3.0), origin=(0.0, 0.0, 0.0), direction=PIR)
    with pytest.raises(ValueError, match=r"a 3D scan is needed, got shape \(4, 5\)"):
        plan_grid((4, 5), geometry)
    flat = Geometry(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"a 3D scan is needed"):
        plan_grid((3, 4, 5), flat)
    half = plan_grid((3, 40, 50), geometry, model_size=64, model_spacing=0.5)
    assert half.rows.model_spacing == 0.5 and half.cols.model_spacing == 0.5 and half.rows.model_size == 64


def test_rounding_in_the_direction_matrix_gives_zero_obliquity() -> None:
    direction = np.asarray(PIR).reshape(3, 3)
    direction[0, 2] = -(1.0 + 1e-12)  # the R cosine a hair above 1, as written by some scanners
    grid = plan_grid((3, 6, 4), Geometry(spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0),
                                         direction=tuple(direction.ravel())))
    assert grid.oblique_deg == 0.0


# --- intensities and inputs --------------------------------------------------------------------------------


def test_normalisation_handles_small_positive_ranges_and_negative_values() -> None:
    small = np.linspace(0.0, 0.8, 1000, dtype=np.float32)  # p98 below 1: still a usable image
    out = normalise_intensity(small)
    assert out.max() == pytest.approx(255.0) and out.min() == 0.0
    shifted = normalise_intensity(np.linspace(-50.0, 100.0, 1000))
    assert shifted.min() == 0.0  # negative intensities clip to 0


def test_input_errors_name_the_file() -> None:
    geometry = Geometry(spacing=(0.6, 0.55, 3.0), origin=(0.0, 0.0, 0.0), direction=PIR)
    with pytest.raises(InputError, match=r"flat\.nrrd: image is 2D, a 3D volume is expected"):
        prepare_scan(np.zeros((4, 5)), geometry, source="flat.nrrd")
    with pytest.raises(InputError, match=r"const\.mha: image is constant or has no positive intensities"):
        prepare_scan(np.ones((3, 40, 50)) * -2.0, geometry, source="const.mha")
    with pytest.raises(InputError, match=r"const\.mha: image is constant"):
        normalise_intensity(np.zeros(10), source="const.mha")
    prepared = prepare_scan(np.random.default_rng(1).random((3, 40, 50)), geometry)
    assert prepared.labels is None and prepared.images.dtype == np.uint8


# --- labels ----------------------------------------------------------------------------------------------------


def test_label_codes_come_back_as_uint8_classes() -> None:
    assert to_classes(np.asarray([0, 1, 2, 3], dtype=np.int64)).dtype == np.uint8
    spider = to_classes(np.asarray([0, 100, 1, 201, 105], dtype=np.uint16))
    assert spider.dtype == np.uint8 and spider.tolist() == [0, 1, 2, 3, 2]
    assert to_classes(np.asarray([0.0, 100.0, 201.0])).tolist() == [0, 1, 3]


def test_unknown_and_non_integer_codes_are_named() -> None:
    with pytest.raises(InputError, match=r"m\.mha: unknown SPIDER label code\(s\) 256$"):
        to_classes(np.asarray([0, 100, 256], dtype=np.uint16), source="m.mha")
    many = np.asarray([0, 100, *range(300, 310)], dtype=np.uint16)
    with pytest.raises(InputError, match=r"code\(s\) 300, 301, 302, 303, 304, 305, 306, 307 and 2 more$"):
        to_classes(many, source="m.mha")
    with pytest.raises(InputError, match=r"m\.mha: mask holds non-integer values \(dtype float64\)"):
        to_classes(np.asarray([0.0, 0.5]), source="m.mha")
    with pytest.raises(ValueError, match="convention must be 'auto', 'spider' or 'semantic', got 'x'"):
        to_classes(np.asarray([0, 1]), convention="x")  # type: ignore[arg-type]


# --- Dice, by hand ---------------------------------------------------------------------------------------------


def test_dice_corner_cases_by_hand() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    square = np.zeros((4, 4), dtype=bool)
    square[:2, :2] = True
    shifted = np.zeros((4, 4), dtype=bool)
    shifted[:2, 1:3] = True  # overlaps square on 2 of its 4 pixels
    assert dice_score(empty, empty) == 1.0
    assert dice_score(square, square) == 1.0
    assert dice_score(square, empty) == 0.0 and dice_score(empty, square) == 0.0
    assert dice_score(square, shifted) == pytest.approx(2 * 2 / 8)
    assert dice_score(square, ~square) == 0.0
    with pytest.raises(ValueError, match=r"shapes differ: \(4, 4\) vs \(2, 2\)"):
        dice_score(square, square[:2, :2])
    prediction = np.asarray([[1, 1, 2, 0], [3, 3, 3, 0]])
    truth = np.asarray([[1, 0, 2, 2], [3, 3, 0, 0]])
    np.testing.assert_allclose(dice_per_class(prediction, truth), [2 / 3, 2 / 3, 4 / 5])
    np.testing.assert_allclose(dice_per_class(prediction, truth, classes=(3, 1)), [4 / 5, 2 / 3])


# --- second round: the mutants that lived through the first ---------------------------------------------------


def test_normalisation_divides_by_the_98th_percentile_not_the_maximum() -> None:
    values = np.linspace(0.0, 0.8, 1000)
    p98 = float(np.percentile(values.astype(np.float32), 98))
    out = normalise_intensity(values)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[500], values[500] / p98 * 255.0, rtol=1e-5)
    sparse = np.zeros(1000)
    sparse[:5] = 0.5  # the 98th percentile is 0: the maximum scales instead, even below 1
    np.testing.assert_allclose(normalise_intensity(sparse)[:6], [255.0] * 5 + [0.0])


def test_overflowing_intensities_are_named_as_such() -> None:
    with pytest.raises(InputError, match=r"big\.mha: intensities up to 1e\+300 overflow 32-bit floats"):
        normalise_intensity(np.asarray([1e300, 1.0, 2.0]), source="big.mha")
    with pytest.raises(InputError, match=r"nan\.mha: image holds NaN or infinite values"):
        normalise_intensity(np.asarray([np.nan, 1.0]), source="nan.mha")


def test_restoring_maps_columns_too_and_returns_float32() -> None:
    grid = _grid(shape_zyx=(3, 700, 650))
    ramp = np.tile(np.linspace(0.0, 1.0, 320)[None, :], (320, 1))  # float64 in: float32 out
    restored = restore_probabilities(ramp[None], grid, background_channel=None)
    assert restored.dtype == np.float32
    model_position = (np.arange(grid.cols.native_size) - grid.cols.offset) / grid.cols.scale
    inside = (model_position >= 0) & (model_position <= 319)
    row = grid.rows.native_size // 2
    np.testing.assert_allclose(restored[0, row, inside], np.interp(model_position[inside], np.arange(320),
                                                                    ramp[0]), atol=1e-5)


def test_oblique_directions_are_not_flipped_and_grids_serialise_their_geometry() -> None:
    from spinesegdiff.data.preprocess import Reorientation

    angle = np.radians(10.0)
    rotation = np.asarray([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    lps = np.diag([-1.0, -1.0, 1.0]) @ rotation  # RAS axes tilted by 10 degrees
    assert Reorientation.from_direction(lps).flipped == (False, False, False)
    grid = _grid(shape_zyx=(3, 6, 4))
    saved = grid.to_dict()
    assert set(saved) == {"native_shape", "geometry", "reorientation", "rows", "cols", "plane", "oblique_deg"}
    assert saved["geometry"] == grid.geometry.to_dict()
    assert SagittalGrid.from_dict(saved) == grid


def test_dice_counts_pixels_not_label_values() -> None:
    prediction, truth = np.asarray([0, 2, 2]), np.asarray([0, 1, 0])  # nonzero means "inside"
    assert dice_score(prediction, truth) == pytest.approx(2 * 1 / 3)
    assert dice_score(truth, prediction) == pytest.approx(2 * 1 / 3)
    assert dice_per_class(prediction, truth).dtype == np.float64


def test_scheduler_configs_are_checked_and_read_back() -> None:
    from spinesegdiff.diffusion.config import SchedulerConfig

    assert SchedulerConfig(num_train_timesteps=1).num_train_timesteps == 1
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="num_train_timesteps must be a positive integer"):
            SchedulerConfig(num_train_timesteps=bad)
    with pytest.raises(ValueError, match="a scheduler configuration is a mapping, got list"):
        SchedulerConfig.from_dict([])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown scheduler settings: a, b"):
        SchedulerConfig.from_dict({"a": 1, "b": 2})
    with pytest.raises(ValueError, match="^the training settings name no noise schedule$"):
        SchedulerConfig.from_train_settings({"epochs": 3})
    assert SchedulerConfig.from_train_settings({"schedule": "cosine"}) == SchedulerConfig(schedule="cosine")
    import spinesegdiff.diffusion as diffusion

    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        _ = diffusion.nothing
