"""Levels named from the sacrum up and measured in mm (spinesegdiff.anatomy), on synthetic slices of known
geometry (tests/levels_phantoms.py), the package's phantoms, and one real SPIDER case."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from levels_phantoms import T1, spine_slice
from spinesegdiff.anatomy import identify_levels, measure_levels, scan_levels, spider_labels
from spinesegdiff.anatomy.components import SpineAxis
from spinesegdiff.anatomy.naming import disc_name, spider_code, vertebra_name
from spinesegdiff.data.labels import DISC, VERTEBRA

SHARED = Path(os.environ.get("SPINESEGDIFF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _by_level(entries: list[dict]) -> dict[str, dict]:
    return {e["level"]: e for e in entries}


def test_names_count_from_the_lowest_disc_up() -> None:
    report = measure_levels(spine_slice(bodies=5))
    assert [v["level"] for v in report.vertebrae] == ["L1", "L2", "L3", "L4", "L5"]
    assert [d["level"] for d in report.discs] == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    assert [d["rank"] for d in report.discs] == [5, 4, 3, 2, 1]
    assert report.note["named_from"] == "lowest disc" and report.note["doubtful"] is False
    assert report.note["reason"] is None


@pytest.mark.parametrize("tilt", [0.0, 20.0])
def test_heights_index_and_canal_in_mm_on_an_anisotropic_tilted_grid(tilt: float) -> None:
    report = measure_levels(spine_slice(tilt_deg=tilt, row_mm=0.45, col_mm=0.7, disc_h=9.0, body_h=25.0,
                                        canal_ap=14.0))
    for disc in report.discs:
        assert disc["height_mm"] == pytest.approx(9.0, abs=0.4)
        assert disc["height_index"] == pytest.approx(9.0 / 25.0, abs=0.02)
        assert disc["canal_ap_mm"] == pytest.approx(14.0, abs=0.8)
        assert disc["heights_mm"]["anterior"] == pytest.approx(9.0, abs=0.6)
    for vertebra in report.vertebrae:
        assert vertebra["height_mm"] == pytest.approx(25.0, abs=0.6)
        assert abs(vertebra["slip_mm"]) < 0.5


def test_a_narrow_disc_has_a_low_height_and_index() -> None:
    from levels_phantoms import spine_slice as build

    report = measure_levels(build(disc_h=9.0))
    narrow = measure_levels(build(disc_h=4.0))
    assert _by_level(narrow.discs)["L4-L5"]["height_mm"] == pytest.approx(4.0, abs=0.4)
    assert _by_level(narrow.discs)["L4-L5"]["height_index"] < _by_level(report.discs)["L4-L5"]["height_index"]


def test_the_report_carries_each_disc_s_depth_index_beside_its_height_index() -> None:
    from spinesegdiff.anatomy.measures import level_factor

    report = measure_levels(spine_slice(bodies=5, disc_h=9.0))
    for disc in report.discs:
        keys = list(disc)
        assert keys[keys.index("height_index") + 1] == "depth_index"
        # the same 9 mm discs: the index only moves with the level's normal height
        assert disc["depth_index"] * level_factor(disc["rank"]) == pytest.approx(
            report.discs[0]["depth_index"] * level_factor(report.discs[0]["rank"]), rel=0.03)


def test_slip_is_the_anterior_offset_over_the_vertebra_below() -> None:
    report = measure_levels(spine_slice(slips={2: 6.0}, width=36.0))  # L3 moved 6 mm forward
    vertebrae = _by_level(report.vertebrae)
    assert vertebrae["L3"]["slip_mm"] == pytest.approx(6.0, abs=0.6)
    assert vertebrae["L3"]["slip_percent"] == pytest.approx(100 * 6.0 / 36.0, abs=2.0)
    assert vertebrae["L3"]["slip_against"] == "L4"
    assert vertebrae["L2"]["slip_mm"] == pytest.approx(-6.0, abs=0.6)  # L2 sits behind L3: a retrolisthesis
    assert abs(vertebrae["L4"]["slip_mm"]) < 0.5
    assert vertebrae["L5"]["slip_against"].startswith("L5-S1 disc")


def test_signal_ratio_only_on_t2_like_slices() -> None:
    t2 = measure_levels(spine_slice(disc_intensity={3: 0.3}))
    ratios = {d["level"]: d["signal_ratio"] for d in t2.discs}
    assert ratios["L2-L3"] == pytest.approx(0.6 / 0.9, abs=0.01)
    assert ratios["L4-L5"] == pytest.approx(0.3 / 0.9, abs=0.01)  # the dark disc
    t1 = measure_levels(spine_slice(contrast=T1))
    assert all(d["signal_ratio"] is None for d in t1.discs)
    assert t1.note["contrast"].startswith("not T2-like")


def test_a_partly_visible_top_vertebra_is_named_and_not_measured() -> None:
    report = measure_levels(spine_slice(bodies=6, top_offset_mm=50.0))
    top = report.vertebrae[0]
    assert top["level"] == "T12" and top["partial"] is True and top["height_mm"] is None
    assert report.vertebrae[-1]["level"] == "L5" and report.vertebrae[-1]["partial"] is False
    assert report.note["doubtful"] is False


def test_a_missing_disc_is_a_doubt_and_the_count_goes_on() -> None:
    report = measure_levels(spine_slice(missing_discs=[1]))  # no disc below the second body (L2)
    assert report.note["doubtful"] is True and "no disc between two vertebrae" in report.note["reason"]
    assert [d["level"] for d in report.discs] == ["L1-L2", "L3-L4", "L4-L5", "L5-S1"]
    assert [v["level"] for v in report.vertebrae] == ["L1", "L2", "L3", "L4", "L5"]


def test_a_labelled_sacrum_is_s1_and_a_lumbar_looking_lowest_vertebra_is_a_doubtful_l5() -> None:
    sacrum = measure_levels(spine_slice(lowest="sacrum"))
    assert sacrum.note["named_from"] == "sacrum" and sacrum.vertebrae[-1]["level"] == "S1"
    assert sacrum.discs[-1]["level"] == "L5-S1" and not sacrum.note["doubtful"]
    plain = measure_levels(spine_slice(lowest="vertebra"))  # no disc under an ordinary body: L5, its disc missed
    assert plain.note["named_from"] == "lowest vertebra" and plain.note["doubtful"] is True
    assert "L5-S1 disc not found" in plain.note["reason"]
    assert [v["level"] for v in plain.vertebrae][-1] == "L5" and plain.discs[-1]["level"] == "L4-L5"
    assert plain.vertebrae[-1]["slip_mm"] is None


def test_a_small_lowest_disc_is_flagged_as_possibly_transitional() -> None:
    from levels_phantoms import spine_slice as build

    scan = build()
    labels = scan.labels.copy()
    lowest = identify_levels(scan).discs[-1]
    rows, cols = np.nonzero(identify_levels(scan).mask(lowest))
    labels[rows[cols > np.percentile(cols, 25)], cols[cols > np.percentile(cols, 25)]] = 0  # keep a quarter
    report = measure_levels(type(scan)(labels=labels, row_mm=scan.row_mm, col_mm=scan.col_mm, image=scan.image))
    assert report.note["doubtful"] and "transitional" in report.note["reason"]


@pytest.mark.parametrize("kwargs", [{}, {"slips": {1: 5.0}, "tilt_deg": 15.0}, {"missing_discs": [2]},
                                    {"lowest": "sacrum"}, {"bodies": 6, "top_offset_mm": 50.0}])
def test_the_instance_split_keeps_every_semantic_pixel(kwargs: dict) -> None:
    scan = spine_slice(**kwargs)
    levels = identify_levels(scan)
    for kind, cls in (("vertebra", VERTEBRA), ("disc", DISC)):
        union = np.isin(levels.instance_map, [lv.label for lv in levels.levels if lv.kind == kind])
        np.testing.assert_array_equal(union, scan.labels == cls)
    assert len({lv.label for lv in levels.levels}) == len(levels.levels)


def test_posterior_elements_join_their_own_vertebra() -> None:
    scan = spine_slice()
    levels = identify_levels(scan)
    for vertebra in levels.vertebrae:
        whole, body = levels.mask(vertebra), levels.body(vertebra)
        assert (whole & ~body).sum() > 50  # its spinous process, behind the canal
        behind_rows = np.nonzero(whole & ~body)[0]
        body_rows = np.nonzero(body)[0]
        assert body_rows.min() <= np.median(behind_rows) <= body_rows.max()


def test_spider_codes_count_from_l5_and_leave_the_sacrum_out() -> None:
    scan = spine_slice(lowest="sacrum", bodies=6, top_offset_mm=45.0)
    levels = identify_levels(scan)
    codes = levels.spider_map(scan.labels)
    assert codes[levels.mask(levels.by_rank("vertebra", 1))].tolist() == [1] * int(
        levels.mask(levels.by_rank("vertebra", 1)).sum())
    assert set(np.unique(codes[levels.mask(levels.by_rank("disc", 1))])) == {201}
    assert set(np.unique(codes[levels.mask(levels.by_rank("vertebra", 0))])) == {0}  # S1: no SPIDER code
    assert set(np.unique(codes[levels.mask(levels.vertebrae[0])])) == {106}  # partial T12 -> 100 + 6
    assert set(np.unique(codes[scan.labels == 1])) == {100}


def test_level_names_and_codes() -> None:
    assert [vertebra_name(r) for r in (0, 1, 5, 6, 17, 18)] == ["S1", "L5", "L1", "T12", "T1", "C7"]
    assert disc_name(1) == "L5-S1" and disc_name(6) == "T12-L1"
    assert spider_code("vertebra", 1) == 1 and spider_code("vertebra", 3, partial=True) == 103
    assert spider_code("vertebra", 0) == 0 and spider_code("disc", 2) == 202
    with pytest.raises(ValueError, match="at least 1"):
        disc_name(0)


def test_uncertain_edges_widen_the_height_range() -> None:
    certain = measure_levels(spine_slice())
    unsure = measure_levels(spine_slice(uncertainty_rim_px=2))
    for disc in certain.discs:
        low, high = disc["uncertainty"]["height_mm"]
        assert low == high == disc["height_mm"] and disc["uncertainty"]["boundary_entropy"] is None
    for disc in unsure.discs:
        low, high = disc["uncertainty"]["height_mm"]
        assert low < disc["height_mm"] - 1.0 and high > disc["height_mm"] + 0.3
        assert disc["uncertainty"]["boundary_entropy"] == pytest.approx(0.8, abs=0.01)


def test_spine_axis_orders_points_top_to_bottom_and_extends_beyond_its_ends() -> None:
    axis = SpineAxis(np.array([[10.0, 0.0], [0.0, 0.0], [20.0, 10.0]]))
    assert axis.position(np.array([0.0, 0.0])) == pytest.approx(0.0)
    assert axis.position(np.array([10.0, -3.0])) == pytest.approx(10.0)
    assert axis.position(np.array([10.0, 3.0])) == pytest.approx(10.0 + 3 / np.sqrt(2))  # nearer the bend
    assert axis.position(np.array([-5.0, 0.0])) == pytest.approx(-5.0)
    beyond = 10 + np.sqrt(200) + 5
    assert axis.position(np.array([20.0 + 5 / np.sqrt(2), 10.0 + 5 / np.sqrt(2)])) == pytest.approx(beyond)


def test_the_package_phantom_on_its_scan_grid() -> None:
    from spinesegdiff.data.phantom import make_phantom
    from spinesegdiff.data.preprocess import native_slice, plan_grid

    def report_of(slipped: int | None):
        phantom = make_phantom(shape=(3, 240, 200), spacing=(1.0, 1.0, 3.0), slipped_vertebra=slipped,
                               num_vertebrae=6, seed=3)
        grid = plan_grid(phantom.image.shape, phantom.geometry)
        return phantom, grid, scan_levels(phantom.labels, grid, [grid.central_index], image_zyx=phantom.image)

    phantom, grid, slipped = report_of(2)
    _, _, aligned = report_of(None)
    assert [v["level"] for v in slipped.vertebrae][-1] == "L5" and slipped.note["named_from"] == "lowest vertebra"
    assert slipped.note["doubtful"]  # the phantom's lowest vertebra is an ordinary body with no disc beneath
    change = [s["slip_mm"] - a["slip_mm"] for s, a in zip(slipped.vertebrae[:3], aligned.vertebrae[:3],
                                                            strict=True)]
    assert change[2] == pytest.approx(-6.0, abs=1.0)  # the third vertebra moved 6 mm back out of line
    assert change[1] == pytest.approx(6.0, abs=1.0)  # so the one above sits 6 mm more in front of it
    codes = spider_labels(phantom.labels, grid, [grid.central_index])
    assert codes.shape == phantom.labels.shape
    central_codes = native_slice(codes, grid, grid.central_index)
    central_labels = native_slice(phantom.labels, grid, grid.central_index)
    assert set(np.unique(central_codes[central_labels == DISC])) == {202, 203, 204, 205, 206}
    assert set(np.unique(central_codes[central_labels == 1])) == {100}


def test_a_slice_without_spine_is_doubtful_not_an_error() -> None:
    from spinesegdiff.anatomy import SagittalSlice

    empty = measure_levels(SagittalSlice(labels=np.zeros((50, 40), dtype=np.uint8), row_mm=1.0, col_mm=1.0))
    assert empty.discs == [] and empty.vertebrae == [] and empty.note["doubtful"]
    blob = np.zeros((60, 60), dtype=np.uint8)
    blob[10:30, 10:30] = VERTEBRA
    report = measure_levels(SagittalSlice(labels=blob, row_mm=1.0, col_mm=1.0))
    assert report.note["doubtful"] and "no spinal canal" in report.note["reason"]
    assert all(v["level"] is None for v in report.vertebrae)


def test_a_real_case_names_as_many_discs_as_the_radiologists_graded() -> None:
    data, metadata = SHARED / "spider-t2space", SHARED / "spider-metadata"
    if not (data / "masks" / "7_t2_SPACE.mha").exists() or not (metadata / "radiological_gradings.csv").exists():
        pytest.skip(f"SPIDER data absent ({data}, {metadata})")
    from spinesegdiff.evaluation.levels import read_gradings, reference_slice

    report = measure_levels(reference_slice(data / "images" / "7_t2_SPACE.mha", data / "masks" / "7_t2_SPACE.mha"))
    graded = read_gradings(metadata / "radiological_gradings.csv")["7"]
    assert len(report.discs) == len(graded) == 7
    assert report.discs[-1]["level"] == "L5-S1" and not report.note["doubtful"]
    assert all(3.0 < d["height_mm"] < 15.0 for d in report.discs)
    assert all(20.0 < v["height_mm"] < 35.0 for v in report.vertebrae if not v["partial"])


def test_volume_results_report_levels_on_the_mid_sagittal_slice() -> None:
    from spinesegdiff.data.phantom import make_phantom
    from spinesegdiff.data.preprocess import plan_grid

    phantom = make_phantom(shape=(5, 200, 160), spacing=(1.0, 1.0, 3.0), num_vertebrae=5, seed=2)
    grid = plan_grid(phantom.image.shape, phantom.geometry)
    report = scan_levels(phantom.labels, grid, list(range(grid.num_sagittal)), image_zyx=phantom.image)
    assert report.note["slice"] == grid.central_index == 2
    assert scan_levels(phantom.labels, grid, [0, 4, 3]).note["slice"] == 3  # the nearest segmented slice


def test_local_morphology_equals_scipys_on_the_whole_image() -> None:
    from scipy import ndimage

    from spinesegdiff.anatomy.measures import dilate, erode

    mask = np.zeros((60, 40), dtype=bool)
    mask[10:25, 5:30] = True
    mask[0:3, 0:40] = True  # on the image's edge
    mask[50, 20] = True
    np.testing.assert_array_equal(dilate(mask, 3), ndimage.binary_dilation(mask, iterations=3))
    np.testing.assert_array_equal(erode(mask), ndimage.binary_erosion(mask))
    assert not dilate(np.zeros((5, 5), dtype=bool), 2).any() and not erode(np.zeros((5, 5), dtype=bool)).any()


def test_a_canal_in_pieces_still_bounds_every_body() -> None:
    scan = spine_slice(tilt_deg=20.0, row_mm=0.45, col_mm=0.7, canal_gaps=[2])  # the canal lost behind L3-L4
    report = measure_levels(scan)
    assert not report.note["doubtful"]
    for level, vertebra in zip(report.levels.vertebrae, report.vertebrae, strict=True):
        assert level.area_mm2 == pytest.approx(25.0 * 36.0, rel=0.03)  # the lower piece bounds L4 and L5 too
        assert abs(vertebra["slip_mm"]) < 0.5
    from spinesegdiff.anatomy.instances import anterior_of_canal_pieces

    largest_only = anterior_of_canal_pieces(scan, None)
    assert (largest_only != report.levels.anterior).sum() > 100  # the first version cut L4 and L5 wrong here


def test_level_factors_follow_the_literature_pattern() -> None:
    from spinesegdiff.anatomy.measures import LITERATURE_DISC_HEIGHT_MM, level_factor

    assert sum(LITERATURE_DISC_HEIGHT_MM.values()) == pytest.approx(50.72)
    assert level_factor(1) == pytest.approx(10.56 / 10.144)  # L5-S1
    assert level_factor(2) == pytest.approx(11.44 / 10.144)  # L4-L5, the highest normal disc
    assert level_factor(5) == pytest.approx(8.37 / 10.144)  # L1-L2
    assert level_factor(7) == level_factor(5)  # above L1-L2 the source has no value: L1-L2's
    assert level_factor(0) is None and level_factor(None) is None


@pytest.mark.parametrize("tilt", [0.0, 20.0])
def test_body_depth_and_depth_index_in_mm(tilt: float) -> None:
    from spinesegdiff.anatomy import measures as m

    depths = {"L1": 36.0, "L2": 36.0, "L3": 36.0, "L4": 30.0, "L5": 42.0}  # bodies counted from the top
    scan = spine_slice(tilt_deg=tilt, row_mm=0.45, col_mm=0.7, disc_h=9.0, width=36.0,
                       body_depths={3: 30.0, 4: 42.0})
    report = measure_levels(scan)
    levels = report.levels
    for vertebra in levels.vertebrae:
        disc = levels.by_rank("disc", vertebra.rank)
        frame = m.disc_frame(scan, levels, disc)
        assert m.body_depth_mm(scan.points_mm(levels.body(vertebra)), frame, scan) == pytest.approx(
            depths[vertebra.name], abs=0.6)
    heights = {d["rank"]: d["height_mm"] for d in report.discs}
    indices = m.depth_indices(scan, levels, heights)
    by_name = {"L5-S1": [depths["L5"]], "L4-L5": [depths["L4"], depths["L5"]], "L3-L4": [depths["L3"], depths["L4"]],
               "L2-L3": [depths["L2"], depths["L3"]], "L1-L2": [depths["L1"], depths["L2"]]}
    for disc in report.discs:
        expected = disc["height_mm"] / np.mean(by_name[disc["level"]]) / m.level_factor(disc["rank"])
        assert indices[disc["rank"]] == pytest.approx(expected, rel=0.02)
    assert m.depth_index(None, [30.0], 2) is None and m.depth_index(9.0, [None], 2) is None
    assert m.depth_index(9.0, [30.0, 42.0], 2) == pytest.approx(9.0 / 36.0 / m.level_factor(2))


def test_a_narrow_disc_has_a_low_depth_index_and_a_partial_one_none() -> None:
    from spinesegdiff.anatomy import measures as m

    def indices(scan):
        report = measure_levels(scan)
        return m.depth_indices(scan, report.levels, {d["rank"]: d["height_mm"] for d in report.discs})

    assert indices(spine_slice(disc_h=4.0))[2] < 0.6 * indices(spine_slice(disc_h=9.0))[2]
    top_cut = spine_slice(bodies=6, top_offset_mm=50.0, body_depths={0: 24.0})  # T12, cut by the image edge,
    # is not measured: T12-L1's index takes L1's depth alone
    report = measure_levels(top_cut)
    values = m.depth_indices(top_cut, report.levels, {d["rank"]: d["height_mm"] for d in report.discs})
    frame = m.disc_frame(top_cut, report.levels, report.levels.by_rank("disc", 6))
    l1 = m.body_depth_mm(top_cut.points_mm(report.levels.body(report.levels.by_rank("vertebra", 5))), frame,
                         top_cut)
    t12_l1 = next(d for d in report.discs if d["level"] == "T12-L1")
    assert values[6] == pytest.approx(t12_l1["height_mm"] / l1 / m.level_factor(6))


def test_pixel_indices_are_nonzero_in_its_order() -> None:
    from spinesegdiff.anatomy.sagittal import pixel_indices

    rng = np.random.default_rng(3)
    for mask in (rng.random((40, 50)) > 0.97, np.zeros((40, 50), bool), np.ones((3, 4), bool)):
        rows, cols = pixel_indices(mask)
        expected_rows, expected_cols = np.nonzero(mask)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(cols, expected_cols)
    edge = np.zeros((40, 50), bool)
    edge[39, 49] = edge[0, 10] = True  # pixels on the last row and column, first row
    np.testing.assert_array_equal(np.column_stack(pixel_indices(edge)), [[0, 10], [39, 49]])
