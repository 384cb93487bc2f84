"""Hostile inputs to ``spinesegdiff predict``: cut-short files, broken DICOM series, blank or noise slices,
implausible results and NaN weights are refused with one line naming the file, never segmented."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from spinesegdiff.data.io import Geometry, read_image, write_image
from spinesegdiff.data.labels import DISC, SPINAL_CANAL, VERTEBRA
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.errors import InputError
from spinesegdiff.models import ModelConfig, build_model
from spinesegdiff.models.checkpoint import load_model, save_checkpoint
from spinesegdiff.pipelines.checks import (
    QualityWarning,
    check_slice_signal,
    check_spine_quality,
    slice_signal,
    spine_quality,
)
from spinesegdiff.pipelines.predict import load_scan

SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # SPIDER's direction: z is left-right


def _phantom_volume(slices: int = 9) -> tuple[np.ndarray, Geometry]:
    phantom = make_phantom(shape=(slices, 160, 120), spacing=(1.0, 1.0, 2.0), seed=3)
    return (phantom.image * 1000).astype(np.int16), phantom.geometry


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize(("suffix", "compress"), [(".mha", False), (".mha", True), (".nii", False),
                                                    (".nii.gz", True)])
def test_a_file_cut_short_is_refused(tmp_path: Path, suffix: str, compress: bool) -> None:
    array, geometry = _phantom_volume()
    scan = tmp_path / f"scan{suffix}"
    write_image(scan, array, geometry, compress=compress)
    read_image(scan)  # whole: reads
    _cut(scan, 1 / 3)
    with pytest.raises(InputError, match=rf"scan{suffix.replace('.', '[.]')}: file is truncated"):
        read_image(scan)


@pytest.mark.parametrize("compress", [False, True])
def test_an_mha_announcing_more_slices_than_it_holds_is_refused(tmp_path: Path, compress: bool) -> None:
    array, geometry = _phantom_volume()
    scan = tmp_path / "scan.mha"
    write_image(scan, array, geometry, compress=compress)
    scan.write_bytes(scan.read_bytes().replace(b"DimSize = 120 160 9", b"DimSize = 120 160 12"))
    with pytest.raises(InputError, match=r"scan.mha: file is truncated \(holds 345600 of the 460800 bytes"):
        read_image(scan)


def test_a_real_scan_cut_short_is_refused(spider_subset: Path, tmp_path: Path) -> None:
    scan = tmp_path / "118_t2_SPACE.mha"
    shutil.copy(spider_subset / "images" / "118_t2_SPACE.mha", scan)
    assert read_image(scan)[0].shape == (9, 640, 512)
    _cut(scan, 0.9)
    with pytest.raises(InputError, match="118_t2_SPACE.mha: file is truncated"):
        load_scan(scan)


@pytest.mark.parametrize("problem", ["cut_short", "missing", "uneven"])
def test_a_broken_dicom_series_is_refused(tmp_path: Path, problem: str) -> None:
    from test_io import _write_dicom_series

    array, geometry = _phantom_volume()
    folder = tmp_path / "series"
    _write_dicom_series(folder, array, geometry)
    assert read_image(folder)[0].shape == (9, 160, 120)
    if problem == "cut_short":
        _cut(folder / "slice004.dcm", 0.5)
        fragment = r"4.00 mm between slice003.dcm and slice005.dcm, 2.00 mm elsewhere; files not read .*slice004.dcm"
    elif problem == "missing":
        (folder / "slice004.dcm").unlink()
        fragment = r"4.00 mm between slice003.dcm and slice005.dcm, 2.00 mm elsewhere$"
    else:  # slice 8 moved 0.5 mm: its tags say so
        plane = sitk.ReadImage(str(folder / "slice008.dcm"))
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(folder / "slice008.dcm"))
        reader.ReadImageInformation()
        for key in reader.GetMetaDataKeys():
            plane.SetMetaData(key, reader.GetMetaData(key))
        position = [float(v) for v in reader.GetMetaData("0020|0032").split("\\")]
        position[0] += 0.5 if geometry.direction[2] else 0.0
        plane.SetMetaData("0020|0032", "\\".join(f"{v:.10f}" for v in position))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / "slice008.dcm"))
        writer.Execute(plane)
        fragment = r"between slice007.dcm and slice008.dcm"
    with pytest.raises(InputError, match=rf"series: DICOM slices are not evenly spaced .*{fragment}"):
        read_image(folder)


def test_overflowing_intensities_are_named(tmp_path: Path) -> None:
    array, geometry = _phantom_volume(3)
    scan = tmp_path / "huge.nrrd"
    write_image(scan, array.astype(np.float64) * 1e300, geometry)
    with pytest.raises(InputError, match=r"huge.nrrd: intensities up to 1e\+30\d overflow 32-bit floats"):
        load_scan(scan)


@pytest.mark.parametrize(("problem", "fragment"), [
    ("central_zero", "central sagittal slice 4 is blank \\(every pixel is 0\\)"),
    ("central_constant", "central sagittal slice 4 is blank \\(every pixel is 7\\)"),
    ("mostly_zero", "central sagittal slice 4 is mostly empty \\(7\\d% of its pixels are 0\\)"),
    ("one_bright_spot", "central sagittal slice 4 carries almost no signal"),
    ("noise", "central sagittal slice 4 looks like noise, not an image"),
])
def test_a_slice_without_an_image_is_refused_before_inference(tmp_path: Path, problem: str, fragment: str) -> None:
    array, geometry = _phantom_volume()
    rng = np.random.default_rng(0)
    if problem == "central_zero":
        array[4] = 0
    elif problem == "central_constant":
        array[4] = 7
    elif problem == "mostly_zero":
        array[4, :, : int(120 * 0.75)] = 0
    elif problem == "one_bright_spot":
        array[4] = 0
        array[4, :60] = 1  # a faint band and a small lit patch: 15 % of the slice
        array[4, 130:154] = 1000
    else:
        array[:] = rng.integers(0, 1000, array.shape)
    scan = tmp_path / "scan.mha"
    write_image(scan, array, geometry)
    with pytest.raises(InputError, match=f"scan.mha: {fragment}"):
        load_scan(scan)


def test_a_2000_pixel_noise_slice_is_refused(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).uniform(0, 1000, (3, 2000, 2000)).astype(np.float32)
    with pytest.raises(InputError, match=r"slice 1 looks like noise, not an image .*correlate -?0[.]0"):
        load_scan((noise, Geometry((0.3, 0.3, 3.0), (0.0, 0.0, 0.0), SAGITTAL)))


def test_real_scans_carry_signal_with_margin(spider_subset: Path) -> None:
    for scan in sorted((spider_subset / "images").glob("*.mha"))[:8]:
        loaded = load_scan(scan)
        from spinesegdiff.data.preprocess import native_slice

        found = slice_signal(native_slice(loaded.image, loaded.prepared.grid, loaded.prepared.grid.central_index))
        assert found["at_minimum"] < 0.2 and found["signal"] > 0.5 and found["correlation"] > 0.9, scan.name


def _spine_labels() -> np.ndarray:
    """A drawn lumbar spine on the 320 x 320 model grid: 5 bodies and 4 discs in a column, canal behind."""
    labels = np.zeros((320, 320), np.uint8)
    top = 40
    for level in range(5):
        labels[top:top + 30, 100:140] = VERTEBRA
        if level < 4:
            labels[top + 30:top + 40, 100:140] = DISC
        top += 40
    labels[30:240, 150:165] = SPINAL_CANAL
    return labels


def test_spine_quality_accepts_a_spine_and_flags_what_is_wrong() -> None:
    spine = _spine_labels()
    assert spine_quality(spine)["verdict"] == "ok"
    everything = spine.copy()
    everything[:, 180:] = SPINAL_CANAL
    doubtful = spine_quality(everything)
    assert doubtful["verdict"] == "doubtful" and any("cover" in r for r in doubtful["reasons"])
    front = spine.copy()
    front[front == SPINAL_CANAL] = 0
    front[30:240, 70:85] = SPINAL_CANAL
    assert spine_quality(front)["reasons"] == ["canal not behind the vertebrae (offset -42.5 mm)"]
    lateral = spine.copy()
    lateral[lateral == SPINAL_CANAL] = 0
    assert spine_quality(lateral)["reasons"] == ["no spinal canal (a slice beside the midline shows none)"]
    nothing = np.zeros_like(spine)
    nothing[10:20, 10:20] = SPINAL_CANAL
    verdict = spine_quality(nothing)
    assert verdict["verdict"] == "implausible"
    with pytest.raises(InputError, match=r"scan.mha: no plausible lumbar spine found .*VB_mm2 0 < 1000"):
        check_spine_quality(verdict, "scan.mha")
    with pytest.warns(QualityWarning, match="scan.mha: the segmentation does not look like a whole lumbar spine"):
        check_spine_quality(doubtful, "scan.mha")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_spine_quality(spine_quality(spine), "scan.mha")


def test_a_slice_that_is_an_image_passes_the_signal_check() -> None:
    array, _ = _phantom_volume()
    check_slice_signal(array[4], 4, "scan.mha")  # no error
    with pytest.raises(InputError, match="scan.mha: central sagittal slice 4 looks like noise"):
        check_slice_signal(np.random.default_rng(2).random((300, 300)), 4, "scan.mha")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_model_with_nan_or_infinite_weights_is_refused(tmp_path: Path, bad: float) -> None:
    config = ModelConfig(variant="spinesegdiff", widths=(8, 8, 16), time_embed_dim=32, patch_size=2)
    net = build_model(config)
    state = net.state_dict()
    path = tmp_path / "tiny.pt"
    payload = {"model_config": config.to_dict(), "scheduler": {"schedule": "linear", "num_train_timesteps": 1000},
               "model": state, "ema": state}
    save_checkpoint(path, payload)
    load_model(path)  # finite: loads
    name = next(k for k, v in state.items() if v.is_floating_point())
    broken = {k: v.clone() for k, v in state.items()}
    broken[name].view(-1)[0] = torch.tensor(bad)
    save_checkpoint(path, {**payload, "model": broken, "ema": broken})
    with pytest.raises(InputError, match=r"tiny.pt: model file holds NaN or infinite weights \(1 tensors"):
        load_model(path)


def test_a_folder_that_is_not_an_nnunet_model_is_refused_before_nnunet_opens_it(tmp_path: Path) -> None:
    from spinesegdiff.errors import MissingInputError
    from spinesegdiff.pipelines.nnunet import check_model_folder

    folder = tmp_path / "model"
    (folder / "fold_0").mkdir(parents=True)
    with pytest.raises(MissingInputError, match=r"plans\.json"):
        check_model_folder(folder)
    (folder / "plans.json").write_text("{}")
    with pytest.raises(MissingInputError, match=r"dataset\.json"):
        check_model_folder(folder)
    (folder / "dataset.json").write_text("not json")
    with pytest.raises(MissingInputError, match=r"fold_0/checkpoint_final\.pth"):
        check_model_folder(folder)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"\x80\x04 pickle that must never be loaded")
    with pytest.raises(InputError, match=r"dataset\.json: not an nnU-Net dataset\.json"):
        check_model_folder(folder)
    (folder / "dataset.json").write_text('{"labels": {"background": 0, "liver": 1}}')
    with pytest.raises(InputError, match=r"labels .* are not background/canal/vertebra/disc 0-3"):
        check_model_folder(folder)
    (folder / "dataset.json").write_text('{"labels": {"background": 0, "canal": 1, "vertebra": 2, "disc": 3}}')
    check_model_folder(folder)
