"""The slice to segment, chosen by anatomy (issue 13): the mid-sagittal slice shows the widest canal and the
spinous processes; ``--slice`` names another; the report says which and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spinesegdiff.data.io import Geometry
from spinesegdiff.data.labels import SPINAL_CANAL, VERTEBRA
from spinesegdiff.data.preprocess import plan_grid
from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.pipelines.midline import (
    MIN_CANAL_MM2,
    canal_behind_vertebrae,
    candidate_slices,
    choose_slice,
    midline_score,
)


def _grid(num_slices: int, slice_mm: float):
    """A PIR-oriented sagittal grid (like the SPIDER files): ``num_slices`` slices ``slice_mm`` apart."""
    geometry = Geometry(spacing=(1.0, 1.0, slice_mm), origin=(0.0, 0.0, 0.0),
                        direction=(0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
    return plan_grid((num_slices, 200, 160), geometry)


def test_candidates_cover_30_mm_around_the_centre_at_most_2_mm_apart() -> None:
    grid = _grid(21, 1.0)
    assert candidate_slices(grid) == list(range(0, 21, 2))
    grid = _grid(15, 4.0)
    assert candidate_slices(grid) == list(range(0, 15)), "thick slices: every one within 30 mm"
    grid = _grid(201, 0.5)
    picked = candidate_slices(grid)
    assert picked[0] == 100 - 60 and picked[-1] == 100 + 60 and np.all(np.diff(picked) == 4)


def _slice(canal_width: int, with_processes: bool) -> np.ndarray:
    labels = np.zeros((320, 320), dtype=np.uint8)
    labels[40:280, 100:140] = VERTEBRA
    labels[40:280, 140:140 + canal_width] = SPINAL_CANAL
    if with_processes:
        labels[60:80, 160:200] = VERTEBRA  # behind the canal: a spinous process
    labels[60:80, 60:90] = VERTEBRA  # in front of the canal: never counted as posterior
    return labels


def test_midline_score_counts_the_canal_and_what_lies_behind_it() -> None:
    canal, posterior = midline_score(_slice(15, with_processes=True))
    assert canal == 240 * 15 and posterior == 20 * 40
    assert midline_score(_slice(15, with_processes=False))[1] == 0
    assert midline_score(np.zeros((320, 320), dtype=np.uint8)) == (0.0, 0.0)


def test_the_widest_canal_with_processes_wins_and_ties_go_to_the_centre() -> None:
    labels = np.stack([_slice(15, True), _slice(8, False), _slice(15, False), _slice(15, True), _slice(12, True)])
    choice = choose_slice([2, 3, 4, 5, 6], labels, central=4)
    assert choice.index == 5 and choice.chosen_by == "anatomy", "2 and 5 tie; 2 is one further from the centre"
    assert "+1 slices from the centre" in choice.reason
    assert choice.to_dict()["scores_mm2"]["5"] == pytest.approx(240 * 15 + 0.5 * 800)


def _false_canal_in_front() -> np.ndarray:
    """A lateral slice as a presegmenter can see it: a wide "canal" (a vessel) in front of the vertebrae, and
    the vertebrae behind it, which the score would count as posterior elements."""
    labels = np.zeros((320, 320), dtype=np.uint8)
    labels[40:280, 60:90] = SPINAL_CANAL
    labels[40:280, 90:200] = VERTEBRA
    return labels


def test_a_slice_whose_canal_lies_in_front_of_the_vertebrae_is_never_chosen() -> None:
    lateral = _false_canal_in_front()
    assert sum(midline_score(lateral)) > sum(midline_score(_slice(15, True)))  # it would win on its score
    assert not canal_behind_vertebrae(lateral) and canal_behind_vertebrae(_slice(15, True))
    choice = choose_slice([0, 4], np.stack([lateral, _slice(15, True)]), central=4)
    assert choice.index == 4 and choice.chosen_by == "anatomy"
    alone = choose_slice([0, 4], np.stack([lateral, _slice(1, True)]), central=4)
    assert alone.index == 4 and alone.chosen_by == "centre" and "behind the vertebrae" in alone.reason


def test_without_a_canal_the_centre_is_kept_and_the_report_says_why() -> None:
    labels = np.stack([_slice(1, True), _slice(1, False)])  # 240 mm^2 of canal at most
    assert MIN_CANAL_MM2 > 240
    choice = choose_slice([3, 4], labels, central=4)
    assert choice.index == 4 and choice.chosen_by == "centre" and "no candidate slice shows a spinal canal" \
        in choice.reason


# --- through predict, with the shipped models on the shipped sample scan ------------------------------------

@pytest.fixture(scope="module")
def sample() -> Path:
    from spinesegdiff.assets import sample_scan_path

    return sample_scan_path()


@pytest.fixture(scope="module")
def shipped():
    from spinesegdiff.pipelines.presegmenters import resolve_presegmenter
    from spinesegdiff.pipelines.segmenter import Segmenter
    from spinesegdiff.pipelines.settings import SamplerSettings

    presegmenter = resolve_presegmenter(None, user_model=False, device="cpu")
    return Segmenter.from_checkpoint(None, device="cpu", quiet=True, presegmenter=presegmenter,
                                     settings=SamplerSettings(num_samples=2))


def test_predict_segments_the_slice_anatomy_picks_and_reports_it(sample: Path, shipped) -> None:
    from spinesegdiff.pipelines.predict import segment

    result = segment(sample, segmenter=shipped)
    choice = result.settings["slice"]
    assert choice["chosen_by"] == "anatomy" and result.prepared.indices == [choice["index"]]
    scores = {int(k): v for k, v in choice["scores_mm2"].items()}
    assert choice["index"] == max(scores, key=scores.get)
    assert result.labels[:, :, :].any() and json.dumps(choice)


def test_the_candidates_are_prepared_with_the_scan_once(sample: Path, shipped, monkeypatch) -> None:
    import numpy as np

    from spinesegdiff.pipelines import predict as predict_module
    from spinesegdiff.pipelines.midline import candidate_slices

    loaded = predict_module.load_scan(sample)
    grid = loaded.prepared.grid
    assert loaded.candidates.indices == candidate_slices(grid) and loaded.prepared.indices == [grid.central_index]
    k = loaded.candidates.indices.index(grid.central_index)
    np.testing.assert_array_equal(loaded.prepared.images[0], loaded.candidates.images[k])
    single = predict_module.load_scan(sample, slice_index="centre")
    assert single.candidates is None  # a slice the user names needs no choice
    np.testing.assert_array_equal(single.prepared.images, loaded.prepared.images)
    assert predict_module.load_scan(sample, volume=True).candidates is None

    def no_second_preparation(*args, **kwargs):
        raise AssertionError("the candidates were prepared again")

    monkeypatch.setattr(predict_module, "prepare_scan", no_second_preparation)
    result = predict_module.segment_loaded(loaded, shipped)
    chosen = result.settings["slice"]["index"]
    np.testing.assert_array_equal(result.prepared.images[0],
                                  loaded.candidates.images[loaded.candidates.indices.index(chosen)])


def test_slice_names_the_slice(sample: Path, shipped) -> None:
    from spinesegdiff.pipelines.predict import segment

    result = segment(sample, segmenter=shipped, slice_index=7)
    assert result.prepared.indices == [7]
    assert result.settings["slice"] == {"index": 7, "chosen_by": "user", "reason": "--slice 7"}
    central = segment(sample, segmenter=shipped, slice_index="centre")
    assert central.prepared.indices == [central.prepared.grid.central_index]


def test_a_slice_outside_the_scan_or_with_volume_is_refused(sample: Path) -> None:
    from spinesegdiff.pipelines.predict import load_scan

    with pytest.raises(InputError, match=r"--slice 9: the scan has 9 sagittal slices \(0\.\.8\)$"):
        load_scan(sample, slice_index=9)
    with pytest.raises(SpineSegDiffError, match="--slice names one slice; --volume segments them all"):
        load_scan(sample, volume=True, slice_index=3)


def test_the_slice_option_is_one_line_on_the_command_line(tmp_path: Path, sample: Path) -> None:
    from predict_helpers import predict

    result = predict("-i", str(sample), "-o", str(tmp_path / "out"), "--slice", "twelve", "--device", "cpu")
    assert result.returncode == 2 and "expected a slice number or centre, got 'twelve'" in result.stderr
    result = predict("-i", str(sample), "-o", str(tmp_path / "out"), "--slice", "-1", "--device", "cpu")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("--slice -1: the scan has 9 sagittal slices (0..8)")
    assert not list((tmp_path / "out").glob("*_seg*"))


def test_a_one_slice_scan_is_segmented_as_it_is_with_no_midline_claim(sample: Path, shipped, monkeypatch) -> None:
    from spinesegdiff.data.io import read_image
    from spinesegdiff.pipelines import predict as predict_module
    from spinesegdiff.pipelines.overlay import how_chosen

    volume, geometry = read_image(sample)
    lateral = volume[2:3]  # SimpleITK order (z, y, x) of a PIR series: z runs left to right
    loaded = predict_module.load_scan((lateral, geometry))
    assert loaded.candidates is None and loaded.prepared.indices == [0]

    def no_choice(*args, **kwargs):
        raise AssertionError("a one-slice scan has no mid-sagittal slice to choose")

    monkeypatch.setattr(predict_module, "_at_midline", no_choice)
    result = predict_module.segment_loaded(loaded, shipped)
    choice = result.settings["slice"]
    assert choice["index"] == 0 and choice["chosen_by"] == "only" and "not known" in choice["reason"]
    assert how_chosen(result.settings) == "the scan's only sagittal slice"
    named = predict_module.segment((lateral, geometry), segmenter=shipped, slice_index=0)
    assert named.settings["slice"]["chosen_by"] == "user"
