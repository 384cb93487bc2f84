"""spinesegdiff predict / demo / segment(): outputs on the input's own grid, batch mode, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spinesegdiff.data.io import Geometry, read_image, write_image
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.models import ModelConfig, build_model
from spinesegdiff.models.checkpoint import save_checkpoint

FAST = ["--samples", "2", "--steps", "2", "--fuse-steps", "2"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained tiny network in our checkpoint format: fast, for geometry and error handling."""
    config = ModelConfig(variant="spinesegdiff", widths=(8, 8, 16), time_embed_dim=32, patch_size=2)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    net = build_model(config)
    save_checkpoint(path, {"model_config": config.to_dict(), "train_config": {"schedule": "linear"},
                           "model": net.state_dict(), "ema": net.state_dict()})
    return path


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spinesegdiff", "predict", *args], capture_output=True,
                          encoding="utf-8", errors="replace", timeout=300)


def _assert_same_grid(output: Path, reference: Path) -> np.ndarray:
    out, ref = sitk.ReadImage(str(output)), sitk.ReadImage(str(reference))
    assert out.GetSize() == ref.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(out.GetOrigin(), ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(out.GetDirection(), ref.GetDirection(), atol=1e-6)
    return sitk.GetArrayFromImage(out)


def _write_phantom(path: Path, **kwargs) -> Path:
    phantom = make_phantom(**kwargs)
    write_image(path, (phantom.image * 800).astype(np.int16), phantom.geometry)
    return path


def test_real_mha_outputs_keep_the_geometry(spider_subset: Path, tiny_model: Path, tmp_path: Path) -> None:
    scan = spider_subset / "images" / "118_t2_SPACE.mha"
    result = predict("-i", str(scan), "-o", str(tmp_path / "out"), "--model", str(tiny_model), *FAST, "--quiet")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["118_t2_SPACE.json", "118_t2_SPACE_overlay.png", "118_t2_SPACE_seg.mha",
                     "118_t2_SPACE_uncertainty.mha"]
    labels = _assert_same_grid(tmp_path / "out" / "118_t2_SPACE_seg.mha", scan)
    uncertainty = _assert_same_grid(tmp_path / "out" / "118_t2_SPACE_uncertainty.mha", scan)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}
    assert uncertainty.dtype == np.float32 and uncertainty.min() >= 0 and uncertainty.max() <= 1
    # central-slice mode: only slice 4 of 9 (the last array axis of this PIR series is R) is segmented
    touched = np.nonzero(uncertainty.reshape(uncertainty.shape[0], -1).max(axis=1))[0]
    assert touched.tolist() == [4]
    report = json.loads((tmp_path / "out" / "118_t2_SPACE.json").read_text())
    assert report["mode"] == "central slice" and report["sagittal_slices"] == [4]
    assert set(report["structures"]) >= {"SC", "VB", "IVD", "overall_uncertainty_mean"}
    assert "area_mm2" in report["structures"]["VB"] and report["timings_s"]["sample_s"] > 0
    assert report["sampler"]["num_samples"] == 2


def test_tptbox_nifti_volume_mode(tptbox_sample: Path, tiny_model: Path, tmp_path: Path) -> None:
    scan = tptbox_sample / "sub-mri_label-6_T2w.nii.gz"
    result = predict("-i", str(scan), "-o", str(tmp_path), "--model", str(tiny_model), "--samples", "1",
                     "--steps", "1", "--fuse-steps", "1", "--volume", "--quiet")
    assert result.returncode == 0, result.stderr
    _assert_same_grid(tmp_path / "sub-mri_label-6_T2w_seg.nii.gz", scan)
    uncertainty = _assert_same_grid(tmp_path / "sub-mri_label-6_T2w_uncertainty.nii.gz", scan)
    # volume mode: every sagittal slice (the native x axis runs along R here: direction P-I-R) is touched
    assert (uncertainty.max(axis=(1, 2)) > 0).all()
    report = json.loads((tmp_path / "sub-mri_label-6_T2w.json").read_text())
    assert report["mode"] == "volume" and len(report["sagittal_slices"]) == 67
    assert "volume_mm3" in report["structures"]["SC"]


def test_dicom_input_gives_nifti_and_format_option(tiny_model: Path, tmp_path: Path) -> None:
    from test_io import _write_dicom_series

    phantom = make_phantom(shape=(5, 160, 120), spacing=(1.5, 1.5, 3.0))
    _write_dicom_series(tmp_path / "series", (phantom.image * 1000).astype(np.int16), phantom.geometry)
    result = predict("-i", str(tmp_path / "series"), "-o", str(tmp_path / "out"), "--model", str(tiny_model),
                     *FAST, "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "series_seg.nii.gz").exists()
    seg, geometry = read_image(tmp_path / "out" / "series_seg.nii.gz")
    assert seg.shape == (5, 160, 120) and geometry.allclose(phantom.geometry, atol=1e-3)
    scan = _write_phantom(tmp_path / "p.nii.gz", shape=(3, 160, 120), spacing=(1.5, 1.5, 3.0))
    result = predict("-i", str(scan), "-o", str(tmp_path / "o2"), "--model", str(tiny_model), *FAST,
                     "--format", "nrrd", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o2" / "p_seg.nrrd").exists() and (tmp_path / "o2" / "p_uncertainty.nrrd").exists()


def test_batch_mode_continues_past_a_bad_file(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("a.nii.gz", "c.mha"):
        _write_phantom(folder / name, shape=(3, 160, 120), spacing=(1.5, 1.5, 3.0))
    (folder / "b.nrrd").write_text("not an image")
    (folder / "notes.txt").write_text("ignored: not an image file name")
    result = predict("-i", str(folder), "-o", str(tmp_path / "out"), "--model", str(tiny_model), *FAST)
    assert result.returncode == 2
    assert "b.nrrd: not a readable image" in result.stderr and "1 of 3 scans failed" in result.stderr
    assert "Traceback" not in result.stderr
    produced = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert produced == ["a.json", "a_overlay.png", "a_seg.nii.gz", "a_uncertainty.nii.gz",
                        "c.json", "c_overlay.png", "c_seg.mha", "c_uncertainty.mha"]


def _assert_refused(result: subprocess.CompletedProcess, fragment: str, out: Path) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spinesegdiff: error: "), result.stderr
    assert fragment in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir()), "no output may be written for a refused scan"


@pytest.mark.parametrize("problem", ["missing", "not_an_image", "image_2d", "axial", "too_small", "nan",
                                     "constant", "empty_folder", "bad_format"])
def test_bad_input_is_refused_cleanly(problem: str, tiny_model: Path, tmp_path: Path) -> None:
    scan = tmp_path / "scan.nii.gz"
    extra: list[str] = []
    if problem == "missing":
        fragment = "scan.nii.gz: no such file or folder"
    elif problem == "not_an_image":
        scan.write_bytes(b"\x1f\x8b garbage")
        fragment = "scan.nii.gz: not a readable image"
    elif problem == "image_2d":
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((64, 64), np.float32)), str(scan))
        fragment = "image is 2D, a 3D volume is expected"
    elif problem == "axial":
        phantom = make_phantom(shape=(6, 128, 128))
        write_image(scan, phantom.image, Geometry((0.8, 0.8, 5.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
        fragment = "scan is axial, not sagittal"
    elif problem == "too_small":
        _write_phantom(scan, shape=(3, 30, 30), spacing=(1.0, 1.0, 3.0))
        fragment = "image is too small to hold a lumbar spine"
    elif problem == "nan":  # MetaImage keeps NaN (SimpleITK's NIfTI reader turns NaN into 0)
        scan = tmp_path / "scan.mha"
        phantom = make_phantom(shape=(3, 128, 100))
        image = phantom.image.copy()
        image[1, 3, 3] = np.nan
        write_image(scan, image, phantom.geometry)
        fragment = "image holds NaN"
    elif problem == "constant":
        phantom = make_phantom(shape=(3, 128, 100))
        write_image(scan, np.full_like(phantom.image, 3.0), phantom.geometry)
        fragment = "image is constant"
    elif problem == "empty_folder":
        scan = tmp_path / "empty"
        scan.mkdir()
        fragment = "empty: folder holds no scans"
    else:
        _write_phantom(scan, shape=(3, 128, 100))
        extra = ["--format", "png"]
        fragment = "output format 'png' is not one of"
    out = tmp_path / "out"
    _assert_refused(predict("-i", str(scan), "-o", str(out), "--model", str(tiny_model), *FAST, *extra),
                    fragment, out)


def test_model_file_that_is_not_ours(tmp_path: Path) -> None:
    scan = _write_phantom(tmp_path / "scan.mha", shape=(3, 160, 120), spacing=(1.5, 1.5, 3.0))
    bogus = tmp_path / "weights.pt"
    bogus.write_bytes(b"PK\x03\x04 not really a zip")
    out = tmp_path / "out"
    _assert_refused(predict("-i", str(scan), "-o", str(out), "--model", str(bogus)),
                    "weights.pt: not a spinesegdiff model file", out)
    _assert_refused(predict("-i", str(scan), "-o", str(out), "--model", str(tmp_path / "none.pt")),
                    "none.pt: no such model file", out)


def test_python_api_on_an_array(tiny_model: Path) -> None:
    from spinesegdiff import segment
    from spinesegdiff.pipelines.segmenter import SamplerSettings

    phantom = make_phantom(shape=(3, 160, 120), spacing=(1.5, 1.5, 3.0))
    result = segment((phantom.image, phantom.geometry), model=tiny_model, device="cpu",
                     settings=SamplerSettings(num_samples=2, num_steps=2, fuse_steps=2), quiet=True)
    assert result.labels.shape == phantom.image.shape and result.uncertainty.shape == phantom.image.shape
    assert result.model_grid.probabilities.shape == (1, 3, 320, 320)
    again = segment((phantom.image, phantom.geometry), model=tiny_model, device="cpu",
                    settings=SamplerSettings(num_samples=2, num_steps=2, fuse_steps=2), quiet=True)
    np.testing.assert_array_equal(result.uncertainty, again.uncertainty)  # seeded: deterministic


def test_demo_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "spinesegdiff", "demo", "-o", str(tmp_path / "demo")],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "segmented the shipped sample scan" in result.stdout
    names = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert names == ["spider_107_t2_SPACE.json", "spider_107_t2_SPACE_overlay.png",
                     "spider_107_t2_SPACE_seg.mha", "spider_107_t2_SPACE_uncertainty.mha"]


def test_shipped_model_regression_guard(spider_subset: Path) -> None:
    """Not an evaluation (the shipped model saw every shared patient): a guard against a broken model file."""
    from spinesegdiff import segment
    from spinesegdiff.data.labels import to_classes
    from spinesegdiff.data.preprocess import native_slice
    from spinesegdiff.evaluation.metrics import dice_per_class

    case = "118_t2_SPACE.mha"
    truth = to_classes(read_image(spider_subset / "masks" / case)[0])
    for preseg in ("unet", "none"):  # the default pipeline (U-Net + refiner), and the plain model from noise
        result = segment(spider_subset / "images" / case, device="cpu", quiet=True, preseg=preseg)
        grid, index = result.prepared.grid, result.prepared.indices[0]
        dice = dice_per_class(native_slice(result.labels, grid, index), native_slice(truth, grid, index))
        assert dice.mean() >= 0.85, (preseg, dice)


def test_predict_help_lists_the_options() -> None:
    result = predict("--help")
    assert result.returncode == 0
    for option in ("--volume", "--samples", "--fuse-steps", "--device", "--format", "--model", "--seed", "--preseg",
                   "--preseg-model", "--preseg-steps", "--backend"):
        assert option in result.stdout
