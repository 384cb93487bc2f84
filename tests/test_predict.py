"""spinesegdiff predict / demo / segment(): outputs on the input's own grid, batch mode, and every bad input."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from predict_helpers import predict
from spinesegdiff.data.io import Geometry, read_image, write_image
from spinesegdiff.data.phantom import make_phantom

# the tiny untrained network draws scattered pixels that the anatomical clean-up would remove entirely (and the
# result would be refused as no spine): these tests are about what runs and where outputs go, so they keep them
FAST = ["--samples", "2", "--steps", "2", "--fuse-steps", "2", "--backend", "torch",  # OpenVINO: test_inference
        "--keep-all-parts"]
SAMPLE_GOLDEN = Path(__file__).parent / "data" / "spider_107_t2_SPACE_central_labels.npz"
"""The default pipeline's labels on the central slice of the shipped sample scan (native grid, 640 x 512), as
recorded when the shipped models were made; a uint8 label map, 4 KB compressed."""


def predict_in_a_process(*args: str) -> subprocess.CompletedProcess:
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


@pytest.mark.slow
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
    report = json.loads((tmp_path / "out" / "118_t2_SPACE.json").read_text(encoding="utf-8"))
    assert report["mode"] == "central slice" and report["sagittal_slices"] == [4]
    assert set(report["structures"]) >= {"SC", "VB", "IVD", "overall_uncertainty_mean"}
    assert "area_mm2" in report["structures"]["VB"] and report["timings_s"]["sample_s"] > 0
    assert report["sampler"]["num_samples"] == 2


@pytest.mark.slow
@pytest.mark.usefixtures("spine_judgement_off")  # what the untrained network draws depends on the CPU's bf16
def test_tptbox_nifti_volume_mode(tptbox_sample: Path, tiny_model: Path, tmp_path: Path) -> None:
    scan = tptbox_sample / "sub-mri_label-6_T2w.nii.gz"
    result = predict("-i", str(scan), "-o", str(tmp_path), "--model", str(tiny_model), "--samples", "1",
                     "--steps", "1", "--fuse-steps", "1", "--volume", "--quiet", "--keep-all-parts")
    assert result.returncode == 0, result.stderr
    _assert_same_grid(tmp_path / "sub-mri_label-6_T2w_seg.nii.gz", scan)
    uncertainty = _assert_same_grid(tmp_path / "sub-mri_label-6_T2w_uncertainty.nii.gz", scan)
    # volume mode: every sagittal slice (the native x axis runs along R here: direction P-I-R) is touched
    assert (uncertainty.max(axis=(1, 2)) > 0).all()
    report = json.loads((tmp_path / "sub-mri_label-6_T2w.json").read_text(encoding="utf-8"))
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
    result = predict_in_a_process("-i", str(folder), "-o", str(tmp_path / "out"), "--model", str(tiny_model), *FAST)
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
    result = segment((phantom.image, phantom.geometry), model=tiny_model, device="cpu", keep_all_parts=True,
                     settings=SamplerSettings(num_samples=2, num_steps=2, fuse_steps=2, backend="torch"), quiet=True)
    assert result.labels.shape == phantom.image.shape and result.uncertainty.shape == phantom.image.shape
    assert result.model_grid.probabilities.shape == (1, 3, 320, 320)
    again = segment((phantom.image, phantom.geometry), model=tiny_model, device="cpu", keep_all_parts=True,
                    settings=SamplerSettings(num_samples=2, num_steps=2, fuse_steps=2, backend="torch"), quiet=True)
    np.testing.assert_array_equal(result.uncertainty, again.uncertainty)  # seeded: deterministic


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """What ``spinesegdiff demo`` runs: the default pipeline (the shipped U-Net, then the shipped refiner from
    T_pre = 30) on the shipped sample scan, written to a folder; in PyTorch (OpenVINO's conversion of the model
    would take longer than the sampling; that backend is compared with PyTorch in test_inference)."""
    from spinesegdiff.pipelines.predict import run_demo
    from spinesegdiff.pipelines.settings import SamplerSettings

    return run_demo(tmp_path_factory.mktemp("demo"), device="cpu", settings=SamplerSettings(backend="torch"))


def test_demo_writes_readable_outputs_on_the_scans_grid(demo_run) -> None:
    from spinesegdiff.assets import sample_scan_path

    demo = demo_run.paths["segmentation"].parent
    names = sorted(p.name for p in demo.iterdir())
    assert names == ["spider_107_t2_SPACE.json", "spider_107_t2_SPACE_overlay.png",
                     "spider_107_t2_SPACE_seg.mha", "spider_107_t2_SPACE_uncertainty.mha"]
    labels = _assert_same_grid(demo / "spider_107_t2_SPACE_seg.mha", sample_scan_path())
    uncertainty = _assert_same_grid(demo / "spider_107_t2_SPACE_uncertainty.mha", sample_scan_path())
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(labels, demo_run.result.labels)
    assert uncertainty.dtype == np.float32 and uncertainty.min() >= 0 and 0 < uncertainty.max() <= 1
    report = json.loads((demo / "spider_107_t2_SPACE.json").read_text(encoding="utf-8"))
    assert report["outputs"]["segmentation"] == "spider_107_t2_SPACE_seg.mha"
    assert report["sampler"]["presegmenter"] == "unet" and report["model"].startswith("shipped:")
    for k, key in enumerate(("SC", "VB", "IVD")):
        assert report["structures"][key]["pixels"] == int((labels == k + 1).sum()) > 0
    assert report["quality"]["verdict"] == "ok" and report["quality"]["reasons"] == []
    assert report["quality"]["measures"]["discs"] >= 5
    assert (demo / "spider_107_t2_SPACE_overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlay_needs_no_matplotlib(demo_run, tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    from spinesegdiff.pipelines.overlay import CANVAS_SIZE
    from spinesegdiff.pipelines.predict import render_overlay

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of matplotlib now fails
    render_overlay(demo_run.result, tmp_path / "overlay.png")
    with Image.open(tmp_path / "overlay.png") as picture:
        assert picture.format == "PNG" and picture.size == CANVAS_SIZE
    assert demo_run.result.levels is not None and demo_run.result.levels.discs  # the level names were drawn


def test_demo_command_prints_what_run_demo_did(demo_run, monkeypatch, capsys) -> None:
    from spinesegdiff.cli import main
    from spinesegdiff.pipelines import predict as pipeline

    asked = {}

    def fake_run_demo(output, **options):
        asked.update(options, output=output)
        return demo_run

    monkeypatch.setattr(pipeline, "run_demo", fake_run_demo)
    assert main(["demo", "-o", "somewhere", "--device", "cpu", "--samples", "3"]) == 0
    printed = capsys.readouterr().out
    assert "segmented the shipped sample scan" in printed and "spinal canal" in printed.lower()
    assert str(demo_run.paths["overlay"]) in printed
    assert asked["output"] == Path("somewhere") and asked["device"] == "cpu" and asked["preseg"] is None
    assert asked["settings"].num_samples == 3


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_shipped_models_on_the_sample_scan_match_the_golden_labels(demo_run) -> None:
    """Needs no external data: a broken label map (argmin for argmax, a flipped axis, a wrong class order)
    falls far below the Dice of the shipped pipeline against its own recording (1.0 on the recording machine)."""
    from spinesegdiff.data.preprocess import native_slice

    result = demo_run.result
    central = native_slice(result.labels, result.prepared.grid, result.prepared.indices[0])
    golden = np.load(SAMPLE_GOLDEN)["labels"]
    assert central.shape == golden.shape == (640, 512)
    for k in (1, 2, 3):
        assert _dice(central == k, golden == k) >= 0.9, k


def test_shipped_models_on_the_sample_scan_look_like_a_lumbar_spine(demo_run) -> None:
    """Structural expectations on the model grid (rows superior -> inferior, columns anterior -> posterior)."""
    from scipy import ndimage

    labels = demo_run.result.model_grid.labels[0]
    # shares of the 320 x 320 grid, recorded from the shipped models (0.8879, 0.0235, 0.0724, 0.0161), +- 15 %
    for k, share in enumerate((0.8879, 0.0235, 0.0724, 0.0161)):
        assert abs(float((labels == k).mean()) - share) <= 0.15 * share, k
    columns = np.indices(labels.shape)[1]
    canal, discs = columns[labels == 1].mean(), columns[labels == 3].mean()
    assert canal > discs + 10, "the spinal canal lies posterior to the discs"
    # vertebral bodies (components anterior to the canal) and discs alternate from superior to inferior
    parts = []
    for k in (2, 3):
        components, count = ndimage.label(labels == k)
        for index, (row, column) in enumerate(ndimage.center_of_mass(labels == k, components, range(1, count + 1))):
            if column < canal and (components == index + 1).sum() >= 50:
                parts.append((row, k))
    order = [k for _, k in sorted(parts)]
    assert order.count(3) >= 5, order  # at least the five lumbar discs
    assert all(a != b for a, b in itertools.pairwise(order)), order


@pytest.mark.slow
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


# --- the presegmenter rule: one place (pipelines.presegmenters.resolve_presegmenter), CLI and API alike ----------


def test_presegmenter_rule() -> None:
    from spinesegdiff.errors import SpineSegDiffError
    from spinesegdiff.pipelines.presegmenters import (
        UNetPresegmenter,
        default_presegmenter_kind,
        resolve_presegmenter,
    )

    assert default_presegmenter_kind(user_model=False) == "unet"
    assert default_presegmenter_kind(user_model=True) == "none"
    assert resolve_presegmenter(None, user_model=True) is None
    assert isinstance(resolve_presegmenter(None, user_model=False, device="cpu"), UNetPresegmenter)
    with pytest.raises(SpineSegDiffError, match="a presegmenter model was given without a presegmenter"):
        resolve_presegmenter("none", "unet.pt", user_model=False)
    with pytest.raises(SpineSegDiffError, match="T_pre = 30 was given without a presegmenter"):
        resolve_presegmenter(None, user_model=True, preseg_steps=30)
    with pytest.raises(SpineSegDiffError, match="needs --preseg-model"):
        resolve_presegmenter("nnunet", user_model=False)
    with pytest.raises(SpineSegDiffError, match="unknown presegmenter 'sam'"):
        resolve_presegmenter("sam", user_model=False)


def test_api_and_cli_refuse_a_presegmenter_model_without_a_presegmenter(tiny_model: Path, tmp_path: Path) -> None:
    from spinesegdiff import segment
    from spinesegdiff.errors import SpineSegDiffError

    scan = _write_phantom(tmp_path / "scan.mha", shape=(3, 160, 120), spacing=(1.5, 1.5, 3.0))
    with pytest.raises(SpineSegDiffError, match="without a presegmenter"):  # a user's model: no presegmenter
        segment(scan, model=tiny_model, preseg_model=tiny_model, device="cpu", quiet=True)
    out = tmp_path / "out"
    _assert_refused(predict("-i", str(scan), "-o", str(out), "--model", str(tiny_model), "--preseg-model",
                            str(tiny_model)), "without a presegmenter", out)


def test_predict_scans_checks_before_any_work_and_reports_each_scan(tiny_model: Path, tmp_path: Path) -> None:
    from spinesegdiff.errors import InputError, MissingInputError
    from spinesegdiff.pipelines.predict import predict_scans
    from spinesegdiff.pipelines.settings import SamplerSettings

    settings = SamplerSettings(num_samples=1, num_steps=1, fuse_steps=1, backend="torch")
    with pytest.raises(MissingInputError, match="absent: no such file or folder"):
        predict_scans(tmp_path / "absent", tmp_path / "out", model=tiny_model)
    folder = tmp_path / "scans"
    folder.mkdir()
    _write_phantom(folder / "a.mha", shape=(3, 160, 120), spacing=(1.5, 1.5, 3.0))
    (folder / "b.nrrd").write_text("not an image")
    with pytest.raises(InputError, match="output format 'jpg' is not one of"):
        predict_scans(folder, tmp_path / "out", model=tiny_model, output_format="jpg")
    outcomes = list(predict_scans(folder, tmp_path / "out", model=tiny_model, settings=settings, device="cpu",
                                  quiet=True, keep_all_parts=True))
    assert [(o.scan.name, o.index, o.total, o.ok) for o in outcomes] == [("a.mha", 0, 2, True), ("b.nrrd", 1, 2, False)]
    assert outcomes[0].paths["segmentation"] == tmp_path / "out" / "a_seg.mha" and outcomes[0].seconds > 0
    assert "b.nrrd: not a readable image" in outcomes[1].error and outcomes[1].paths is None
