"""Enhanced (multi-frame) DICOM input: one file holding the whole series, as newer scanners export it.

The files are made by highdicom's converter from a classic series (a Legacy Converted Enhanced MR Image), so the
classic series read by GDCM is the reference: the same voxels on the same grid, whether the frames are stored in
position order or not (GDCM alone scrambles them then), as a file or in a folder; broken files are refused in one
line naming the file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_helpers import write_mr_series
from predict_helpers import FAST, SHAPE, predict
from spinesegdiff.data.dicom_series import choose_series
from spinesegdiff.data.io import read_image
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.errors import InputError


@pytest.fixture(scope="module")
def classic(tmp_path_factory):
    """A classic MR series (one file per slice) of the predict tests' phantom, and its read-back."""
    phantom = make_phantom(seed=0, **SHAPE)
    series = write_mr_series(tmp_path_factory.mktemp("classic") / "mr", (phantom.image * 800).astype(np.int16),
                             phantom.geometry)
    return series, read_image(series.folder)


def _enhanced(series, order: list[int] | None = None) -> Dataset:
    """The series as one Legacy Converted Enhanced MR Image, its frames stored in ``order`` (default: as
    highdicom sorts them)."""
    logging.getLogger("highdicom").setLevel(logging.ERROR)  # it notes the window attributes the phantom lacks
    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        [pydicom.dcmread(f) for f in series.files], series_instance_uid=hd.UID(), series_number=10,
        sop_instance_uid=hd.UID(), instance_number=1)
    if order is not None:
        pixels = image.pixel_array[order]
        image.PerFrameFunctionalGroupsSequence = [image.PerFrameFunctionalGroupsSequence[k] for k in order]
        image.PixelData = np.ascontiguousarray(pixels).tobytes()
    return image


def _save(image: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("order", [None, [1, 2, 0]], ids=["in position order", "shuffled"])
def test_an_enhanced_file_reads_as_its_classic_series(classic, tmp_path, order):
    series, (expected, geometry) = classic
    path = _save(_enhanced(series, order), tmp_path / "enhanced.dcm")
    for source in (path, path.parent):  # the file, or the folder holding it
        array, read_geometry = read_image(source)
        np.testing.assert_array_equal(array, expected)
        assert read_geometry.allclose(geometry, atol=1e-4)


def test_pixels_pydicom_cannot_decode_are_decoded_by_gdcm_in_file_order(classic, tmp_path, monkeypatch):
    """A compressed syntax without a pydicom decoder (JPEG 2000, JPEG-LS need plugins) falls back on GDCM, which
    rescales by itself: the rescale is applied once."""
    series, (expected, _) = classic
    path = _save(_enhanced(series, [2, 0, 1]), tmp_path / "enhanced.dcm")
    rescaled = _save(_with_rescale(_enhanced(series, [2, 0, 1])), tmp_path / "rescaled.dcm")

    def no_decoder(self):
        raise RuntimeError("no pixel data handler for this transfer syntax")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    array, _ = read_image(path)
    np.testing.assert_array_equal(array, expected)
    array, _ = read_image(rescaled)
    np.testing.assert_allclose(array, expected * 2.0 - 100.0)


def test_an_enhanced_series_is_described_from_its_functional_groups(classic, tmp_path):
    series, _ = classic
    path = _save(_enhanced(series), tmp_path / "study" / "enhanced.dcm")
    chosen = choose_series(path.parent).series
    assert (chosen.plane, chosen.weighting, chosen.timing_ms["echo"]) == ("sagittal", "T2", 96.0)


def _with_rescale(image: Dataset) -> Dataset:
    """``image`` with a shared rescale: slope 2, intercept -100."""
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "2", "-100", "US"
    image.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = [transform]
    return image


def test_the_rescale_of_each_frame_is_applied(classic, tmp_path):
    series, (expected, _) = classic
    array, _ = read_image(_save(_with_rescale(_enhanced(series)), tmp_path / "rescaled.dcm"))
    assert array.dtype == np.float32
    np.testing.assert_allclose(array, expected * 2.0 - 100.0)


def _frame_moved(image: Dataset, frame: int, offset_mm: float) -> Dataset:
    """``image`` with frame ``frame`` moved ``offset_mm`` along the first world axis."""
    position = image.PerFrameFunctionalGroupsSequence[frame].PlanePositionSequence[0]
    position.ImagePositionPatient = [float(position.ImagePositionPatient[0]) + offset_mm,
                                     *position.ImagePositionPatient[1:]]
    return image


def test_frames_that_are_not_one_volume_are_refused_naming_the_file(classic, tmp_path):
    series, _ = classic
    step = 3.0  # the slice spacing; highdicom stores the frames from left (-x) to right
    duplicate = _save(_frame_moved(_enhanced(series), 0, step), tmp_path / "echoes.dcm")  # two frames, one place
    with pytest.raises(InputError, match=r"echoes.dcm: the multi-frame image has 3 frames at 2 slice positions"):
        read_image(duplicate)
    gap = _save(_frame_moved(_enhanced(series), 0, -step), tmp_path / "gap.dcm")  # a slice missing
    with pytest.raises(InputError, match=r"gap.dcm: the multi-frame image's frames are not evenly spaced"):
        read_image(gap)
    tilted = _enhanced(series)
    orientation = Dataset()
    orientation.ImageOrientationPatient = [0, 1, 0, 0, 0.2, -0.98]
    tilted.PerFrameFunctionalGroupsSequence[1].PlaneOrientationSequence = [orientation]
    with pytest.raises(InputError, match=r"tilted.dcm: the multi-frame image's frames lie in several orientations"):
        read_image(_save(tilted, tmp_path / "tilted.dcm"))
    no_position = _enhanced(series)
    del no_position.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    with pytest.raises(InputError, match=r"nopos.dcm: frame 3 of the multi-frame image has no position"):
        read_image(_save(no_position, tmp_path / "nopos.dcm"))


def test_a_series_split_over_several_multiframe_files_is_refused(classic, tmp_path):
    series, _ = classic
    image = _enhanced(series)
    _save(image, tmp_path / "split" / "part1.dcm")
    image.SOPInstanceUID = hd.UID()
    _save(image, tmp_path / "split" / "part2.dcm")
    with pytest.raises(InputError, match="split: the series is stored as 2 multi-frame files, not one"):
        read_image(tmp_path / "split")


@pytest.mark.usefixtures("spine_judgement_off")
def test_predict_writes_on_the_enhanced_files_own_grid(tiny_model, classic, tmp_path):
    series, (expected, geometry) = classic
    path = _save(_enhanced(series, [2, 0, 1]), tmp_path / "in" / "enhanced.dcm")
    result = predict("-i", str(path), "-o", str(tmp_path / "out"), "--model", str(tiny_model), "--preseg", "none",
                     *FAST)
    assert result.returncode == 0, result.stderr
    labels, label_geometry = read_image(tmp_path / "out" / "enhanced_seg.nii.gz")  # the stem drops .dcm
    assert labels.shape == expected.shape and label_geometry.allclose(geometry, atol=1e-4)
    report = json.loads((tmp_path / "out" / "enhanced.json").read_text(encoding="utf-8"))
    assert report["sagittal_slices"] == [1]
    refused = predict("-i", str(path.parent), "-o", str(tmp_path / "seg"), "--model", str(tiny_model),
                      "--preseg", "none", "--format", "dicom-seg", *FAST)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(f"{path}: is a multi-frame (enhanced) image: --format dicom-seg "
                                           "references the files of a single-frame series (choose another --format)")
    assert not list((tmp_path / "seg").glob("in*"))


@pytest.mark.slow
def test_a_spider_scan_as_one_enhanced_file_gives_the_labels_of_its_classic_series(spider_subset, tmp_path):
    """A real scan (SPIDER patient 107, t2_SPACE; van der Graaf et al., Sci Data 11:264, 2024, CC BY 4.0) as a
    classic series and as one enhanced file with its frames out of order: the shipped models segment the same."""
    from spinesegdiff.pipelines.predict import segment

    array, geometry = read_image(spider_subset / "images" / "107_t2_SPACE.mha")
    series = write_mr_series(tmp_path / "p107", array.astype(np.int16), geometry, patient_id="SPIDER-107")
    order = list(np.random.default_rng(0).permutation(len(series.files)))
    enhanced = _save(_enhanced(series, order), tmp_path / "enhanced" / "p107.dcm")
    from_series, from_file = (segment(source, device="cpu", quiet=True) for source in (series.folder, enhanced))
    assert from_file.geometry.allclose(from_series.geometry, atol=1e-4)
    assert set(np.unique(from_file.labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(from_file.labels, from_series.labels)
