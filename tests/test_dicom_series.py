"""A DICOM folder holding a whole study: which series is read, why, and ``--series`` to read another.

A study export puts sagittal T2 and T1, an axial T2 and a localiser in one folder; the series read is the
sagittal T2 (the models' training contrast), not the one with the most files. The weighting comes from the
acquisition's timing, else from the description's words.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from dicom_helpers import DicomSeries, write_mr_series
from predict_helpers import FAST, SHAPE, predict
from spinesegdiff.data.dicom_series import choose_series, dicom_series_files, image_series, weighting
from spinesegdiff.data.io import Geometry, read_image
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.errors import InputError
from spinesegdiff.review.cases import read_report
from spinesegdiff.review.volumes import read_case_volumes

AXIAL = Geometry(spacing=(1.5, 1.5, 4.0), origin=(-60.0, -60.0, -40.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
T2 = {"SeriesNumber": 3, "SeriesDescription": "t2_tse_sag"}  # TE 96 ms, TR 3500 ms: the helper's defaults
T1 = {"SeriesNumber": 2, "SeriesDescription": "t1_tse_sag", "EchoTime": "11", "RepetitionTime": "550"}
AXIAL_T2 = {"SeriesNumber": 5, "SeriesDescription": "t2_tse_tra"}
LOCALISER = {"SeriesNumber": 1, "SeriesDescription": "localizer", "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
             "EchoTime": "4", "RepetitionTime": "8"}


@pytest.mark.parametrize(("timing", "description", "options", "expected"), [
    ({"echo": 96, "repetition": 3500}, "", (), "T2"),
    ({"echo": 96, "repetition": 3500}, "t2_tse_sag_fs", (), "T2 fat-suppressed"),
    ({"echo": 100, "repetition": 4000}, "", ("FS", "PFP"), "T2 fat-suppressed"),
    ({"echo": 11, "repetition": 550}, "t2 by mistake", (), "T1"),  # the timing wins over the words
    ({"echo": 40, "repetition": 4500, "inversion": 160}, "", (), "STIR"),
    ({"echo": 10, "repetition": 2200, "inversion": 850}, "", (), "T1"),  # T1 FLAIR
    ({"echo": 20, "repetition": 2500}, "", (), "PD"),
    ({}, "T2 TSE SAG", (), "T2"),
    ({}, "sag_T1_tse", (), "T1"),
    ({}, "SAG STIR", (), "STIR"),
    ({}, "pd_tse_sag", (), "PD"),
    ({}, "sag t2 spair", (), "T2 fat-suppressed"),
    ({}, "sT2W_TSE", (), "T2"),
    ({}, "SagT1 FSE", (), "T1"),
    ({}, "T12-L1 level", (), "unknown"),  # T12 is no T1
    ({}, "", (), "unknown"),
])
def test_weighting_from_the_timing_else_the_words(timing, description, options, expected):
    assert weighting(timing, description, options) == expected


def _phantom_volume(seed: int = 0) -> tuple[np.ndarray, Geometry]:
    phantom = make_phantom(seed=seed, **SHAPE)
    return (phantom.image * 800).astype(np.int16), phantom.geometry


def _study(folder, *, with_t2: bool = True) -> dict[str, DicomSeries]:
    """A study export in one folder: sagittal T1 and (optionally) T2 of 3 slices, an axial T2 of 8 slices (the
    most files), a sagittal localiser of 3; each series' slices hold their own values."""
    sagittal, geometry = _phantom_volume()
    study_uid = pydicom.uid.generate_uid()
    written = {}
    kinds = {"t1": (sagittal // 2, geometry, T1), "axial": (np.full((8, 64, 64), 300, np.int16), AXIAL, AXIAL_T2),
             "localiser": (sagittal // 4, geometry, LOCALISER)}
    if with_t2:
        kinds["t2"] = (sagittal, geometry, T2)
    for k, (name, (array, grid, attributes)) in enumerate(kinds.items()):
        written[name] = write_mr_series(folder, array, grid, prefix=f"S{k}IM", attributes=attributes,
                                        study_uid=study_uid, seed=k)
    return written


def test_the_series_are_described_from_their_headers(tmp_path):
    study = _study(tmp_path / "study")
    found = {series.uid: series for series in image_series(tmp_path / "study")}
    assert set(found) == {s.series_uid for s in study.values()}
    t2, axial, localiser = (found[study[name].series_uid] for name in ("t2", "axial", "localiser"))
    assert (t2.number, t2.description, t2.plane, t2.weighting, t2.localiser) == (3, "t2_tse_sag", "sagittal", "T2",
                                                                                   False)
    assert t2.timing_ms == {"echo": 96.0, "repetition": 3500.0}
    assert (axial.plane, axial.weighting, len(axial.files)) == ("axial", "T2", 8)
    assert localiser.localiser and localiser.label() == "series 1 'localizer' (localiser, 3 files)"


def test_a_study_folder_gives_its_sagittal_t2_not_the_series_with_most_files(tmp_path):
    study = _study(tmp_path / "study")
    choice = choose_series(tmp_path / "study")
    assert choice.series.uid == study["t2"].series_uid and choice.chosen_by == "rule"
    assert choice.reason.startswith("sagittal T2, preferred among 4 image series")
    assert [s.description for s in choice.others] == ["t1_tse_sag", "t2_tse_tra", "localizer"]
    assert dicom_series_files(tmp_path / "study") == study["t2"].files
    array, _ = read_image(tmp_path / "study")
    expected, _ = read_image(study["t2"].files[0].parent, series=study["t2"].series_uid)
    np.testing.assert_array_equal(array, expected)
    assert array.max() == _phantom_volume()[0].max()  # the T2 series' own values, not the T1's halves


def test_without_a_sagittal_t2_the_sagittal_t1_is_read_and_the_reason_says_so(tmp_path):
    study = _study(tmp_path / "study", with_t2=False)
    choice = choose_series(tmp_path / "study")
    assert choice.series.uid == study["t1"].series_uid
    assert "no sagittal T2-weighted series" in choice.reason


def test_series_named_by_number_uid_or_words(tmp_path):
    study = _study(tmp_path / "study")
    folder = tmp_path / "study"
    assert choose_series(folder, "2").series.uid == study["t1"].series_uid
    assert choose_series(folder, study["axial"].series_uid).series.uid == study["axial"].series_uid
    choice = choose_series(folder, "T1_TSE")
    assert (choice.series.uid, choice.chosen_by, choice.reason) == (study["t1"].series_uid, "user", "--series T1_TSE")
    array, _ = read_image(folder, series="t1")
    np.testing.assert_array_equal(array, _phantom_volume()[0] // 2)


@pytest.mark.parametrize(("wanted", "problem"), [("sag", "matches 2 series"), ("flair", "matches no series"),
                                                 ("7", "matches no series"), (" ", "--series is empty")])
def test_a_series_named_ambiguously_or_not_at_all_is_refused_with_the_list(tmp_path, wanted, problem):
    _study(tmp_path / "study")
    with pytest.raises(InputError, match=problem) as caught:
        choose_series(tmp_path / "study", wanted)
    if "matches" in problem:
        assert "series 3 't2_tse_sag' (sagittal, T2, 3 files); series 2 't1_tse_sag'" in str(caught.value)


def test_a_lone_series_is_the_only_choice(tmp_path):
    volume, geometry = _phantom_volume()
    series = write_mr_series(tmp_path / "mr", volume, geometry, attributes=T1)
    choice = choose_series(series.folder)
    assert (choice.series.uid, choice.chosen_by, choice.others) == (series.series_uid, "only", ())


@pytest.mark.usefixtures("spine_judgement_off")
def test_predict_on_a_study_folder_reports_the_series_and_takes_another_on_request(tiny_model, tmp_path):
    study = _study(tmp_path / "study")
    before = {f: f.read_bytes() for f in (tmp_path / "study").iterdir()}
    result = predict("-i", str(tmp_path / "study"), "-o", str(tmp_path / "out"), "--model", str(tiny_model),
                     "--preseg", "none", "--format", "dicom-seg", *FAST)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "study.json").read_text(encoding="utf-8"))
    assert report["series"]["uid"] == study["t2"].series_uid and report["series"]["chosen_by"] == "rule"
    assert len(report["series"]["others"]) == 3
    assert (f"spinesegdiff: note: {tmp_path / 'study'}: read series 3 't2_tse_sag' (sagittal T2, preferred among 4 "
            "image series: the models were trained on sagittal T2-weighted scans (--series chooses another))"
            in result.stderr)
    seg = pydicom.dcmread(tmp_path / "out" / "study_seg.dcm")  # references the series that was segmented
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study["t2"].series_uid
    chosen = predict("-i", str(tmp_path / "study"), "-o", str(tmp_path / "t1"), "--model", str(tiny_model),
                     "--preseg", "none", "--series", "2", "--format", "dicom-seg", *FAST)
    assert chosen.returncode == 0, chosen.stderr
    assert "note:" not in chosen.stderr  # the user's choice needs no note
    report = json.loads((tmp_path / "t1" / "study.json").read_text(encoding="utf-8"))
    assert (report["series"]["uid"], report["series"]["chosen_by"]) == (study["t1"].series_uid, "user")
    seg = pydicom.dcmread(tmp_path / "t1" / "study_seg.dcm")  # the T1's grid is the T2's: only the UID tells
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study["t1"].series_uid
    case = read_report(tmp_path / "t1" / "study.json", tmp_path / "t1")  # the review page draws the T1 under it
    np.testing.assert_array_equal(read_case_volumes(case).image, _phantom_volume()[0] // 2)
    assert {f: f.read_bytes() for f in (tmp_path / "study").iterdir()} == before


def test_predict_refuses_a_series_that_is_not_there_or_a_file_in_one_line(tiny_model, tmp_path):
    _study(tmp_path / "study")
    result = predict("-i", str(tmp_path / "study"), "-o", str(tmp_path / "out"), "--model", str(tiny_model),
                     "--series", "flair", *FAST)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"spinesegdiff: error: {tmp_path / 'study'}: --series 'flair' matches no series; the "
                           "folder holds: series 3 't2_tse_sag'")
    assert not list((tmp_path / "out").glob("study*"))
    scan = tmp_path / "scan.mha"
    scan.write_bytes(b"")  # not read: refused before any work
    result = predict("-i", str(scan), "-o", str(tmp_path / "file"), "--model", str(tiny_model), "--series", "2",
                     *FAST)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"spinesegdiff: error: {scan}: --series chooses among the series of a DICOM "
                                     "folder; this is a scan file")
    assert not (tmp_path / "file").exists()


def _export(root) -> dict[str, dict[str, DicomSeries]]:
    """A PACS export of two studies, one folder per series (``DICOM/ST1/SE3/...``), a DICOMDIR-like file at the
    root: each study has a localiser, a sagittal T1 and a sagittal T2, the first also an axial T2."""
    sagittal, geometry = _phantom_volume()
    (root / "DICOMDIR").parent.mkdir(parents=True)
    (root / "DICOMDIR").write_bytes(b"\0" * 132 + b"DICM")  # not an image: left alone
    studies = {}
    for study, patient in (("ST1", "P1"), ("ST2", "P2")):
        uid = pydicom.uid.generate_uid()
        kinds = {"SE1": (sagittal // 4, geometry, LOCALISER), "SE2": (sagittal // 2, geometry, T1),
                 "SE3": (sagittal, geometry, T2)}
        if study == "ST1":
            kinds["SE5"] = (np.full((8, 64, 64), 300, np.int16), AXIAL, AXIAL_T2)
        studies[study] = {name: write_mr_series(root / "DICOM" / study / name, array, grid, attributes=attributes,
                                                study_uid=uid, patient_id=patient)
                          for name, (array, grid, attributes) in kinds.items()}
    return studies


def test_an_export_of_studies_gives_each_studys_sagittal_t2(tmp_path):
    from spinesegdiff.pipelines.inputs import plan_outputs, scan_inputs

    studies = _export(tmp_path / "usb")
    found = scan_inputs(tmp_path / "usb")
    assert found.scans == (studies["ST1"]["SE3"].folder, studies["ST2"]["SE3"].folder)
    notes = [str(s) for s in found.skipped]
    assert len(notes) == 5 and not any(s.error for s in found.skipped)
    assert notes[0] == (f"{studies['ST1']['SE2'].folder}: skipped: series 2 't1_tse_sag' (sagittal, T1, 3 files); "
                        "of its study, SE3's series 3 't2_tse_sag' (sagittal, T2, 3 files) is segmented (--series "
                        "names another)")
    plan = plan_outputs(found, tmp_path / "out", suffix_of=lambda scan: ".nii.gz")
    assert [p.stem for p in plan] == ["ST1_SE3_dicom", "ST2_SE3_dicom"]  # one folder name each is not enough
    chosen = scan_inputs(tmp_path / "usb", series="t1")
    assert chosen.scans == (studies["ST1"]["SE2"].folder, studies["ST2"]["SE2"].folder)
    missing = scan_inputs(tmp_path / "usb", series="5")  # only the first study has a series 5
    assert missing.scans == (studies["ST1"]["SE5"].folder,)
    [error] = [s for s in missing.skipped if s.error]
    assert str(error).startswith(f"{studies['ST2']['SE1'].folder}: a study of 3 series: --series '5' matches no "
                                 "series")


@pytest.mark.usefixtures("spine_judgement_off")
def test_predict_on_an_export_segments_one_series_per_study(tiny_model, tmp_path):
    _export(tmp_path / "usb")
    result = predict("-i", str(tmp_path / "usb"), "-o", str(tmp_path / "out"), "--model", str(tiny_model),
                     "--preseg", "none", *FAST)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == ["ST1_SE3_dicom.json", "ST2_SE3_dicom.json"]
    assert result.stderr.count("skipped: series") == 5
    report = json.loads((tmp_path / "out" / "ST2_SE3_dicom.json").read_text(encoding="utf-8"))
    assert report["series"]["description"] == "t2_tse_sag"


def test_stems_take_as_many_folders_as_make_them_differ(tmp_path):
    from spinesegdiff.pipelines.inputs import ScanInputs, plan_outputs

    scans = tuple(tmp_path / patient / "ST1" / "SE3" for patient in ("PAT1", "PAT2"))
    for scan in scans:
        scan.mkdir(parents=True)
    plan = plan_outputs(ScanInputs(scans=scans, skipped=(), protected={}), tmp_path / "out",
                        suffix_of=lambda scan: ".nii.gz")
    assert [p.stem for p in plan] == ["PAT1_ST1_SE3_dicom", "PAT2_ST1_SE3_dicom"]


def test_series_subfolders_of_one_study_give_one_scan_of_several_studies_each(tmp_path):
    from predict_helpers import write_scan
    from spinesegdiff.pipelines.inputs import scan_inputs

    volume, geometry = _phantom_volume()
    uid = pydicom.uid.generate_uid()
    t1 = write_mr_series(tmp_path / "in" / "p1_t1", volume // 2, geometry, attributes=T1, study_uid=uid)
    t2 = write_mr_series(tmp_path / "in" / "p1_t2", volume, geometry, attributes=T2, study_uid=uid)
    other = write_mr_series(tmp_path / "in" / "p2", volume, geometry, attributes=T1, patient_id="P2")
    scan = write_scan(tmp_path / "in" / "p3.mha")
    found = scan_inputs(tmp_path / "in")
    assert found.scans == (t2.folder, other.folder, scan)  # name order: p1_t2, p2, p3.mha
    assert [s.path for s in found.skipped] == [t1.folder]
