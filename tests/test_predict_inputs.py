"""Which inputs ``spinesegdiff predict`` segments, where their outputs go, and options checked before any work.

Every hostile case of issue 12 owned by ``pipelines/inputs.py``, ``pipelines/settings.py`` and the predict
command: inputs never overwritten, earlier outputs and label maps skipped, shared stems, broken links, an output
"folder" that is a file, options out of range, and the Python API's ``image`` argument.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from predict_helpers import FAST, SHAPE, predict, tiny_checkpoint, write_scan
from spinesegdiff.data.io import Geometry, write_image
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.errors import InputError, MissingInputError
from spinesegdiff.pipelines.inputs import (
    check_output_folder,
    checked_image,
    label_values,
    plan_outputs,
    scan_inputs,
    sidecar_outputs,
)
from spinesegdiff.pipelines.settings import InvalidSetting, SamplerSettings

pytestmark = pytest.mark.usefixtures("spine_judgement_off")


def _label_map(path: Path, values=(0, 1, 2, 3), dtype=np.uint8) -> Path:
    phantom = make_phantom(**SHAPE)
    labels = np.asarray(values, dtype=dtype)[np.arange(phantom.image.size).reshape(phantom.image.shape)
                                             % len(values)]
    write_image(path, labels, phantom.geometry)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _one_error(result: subprocess.CompletedProcess, fragment: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spinesegdiff: error: "), result.stderr
    assert fragment in lines[0], lines[0]
    return lines[0]


# 1. inputs are never written

def test_an_output_that_would_replace_an_input_scan_refuses_the_batch(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_scan(folder / "a.mha")
    write_scan(folder / "a_seg.mha", seed=1)  # a scan whose name is a.mha's label output
    before = _snapshot(folder)
    line = _one_error(predict("-i", str(folder), "-o", str(folder), "--model", str(tiny_model), *FAST),
                      "a_seg.mha: is an input, and the output a_seg.mha of a.mha would replace it")
    assert "choose another output folder" in line
    assert _snapshot(folder) == before, "nothing may be written"
    link = tmp_path / "link"  # the same folder through a symbolic link
    link.symlink_to(folder)
    _one_error(predict("-i", str(folder), "-o", str(link), "--model", str(tiny_model), *FAST), "is an input")
    assert _snapshot(folder) == before


def test_an_output_that_is_a_link_to_the_input_is_refused(tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "a.mha")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_uncertainty.mha").symlink_to(scan)
    inputs = scan_inputs(scan)
    with pytest.raises(InputError, match=r"a\.mha: is an input, and the output a_uncertainty\.mha of a\.mha"):
        plan_outputs(inputs, out, suffix_of=lambda _: ".mha")
    assert plan_outputs(inputs, tmp_path / "elsewhere", suffix_of=lambda _: ".mha")[0].stem == "a"


def test_a_file_in_the_input_folder_that_spinesegdiff_did_not_write_is_kept(tmp_path: Path) -> None:
    write_scan(tmp_path / "a.mha")
    (tmp_path / "a.json").write_text('{"patient": "not a report of ours"}')
    inputs = scan_inputs(tmp_path)
    with pytest.raises(InputError, match=r"a\.json: is an input, and the output a\.json of a\.mha"):
        plan_outputs(inputs, tmp_path, suffix_of=lambda _: ".mha")


# 2. re-running into the input folder

def test_rerun_into_the_input_folder_skips_its_own_outputs(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_scan(folder / "a.mha")
    first = predict("-i", str(folder), "-o", str(folder), "--model", str(tiny_model), *FAST)
    assert first.returncode == 0, first.stderr
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["a.json", "a.mha", "a_overlay.png", "a_seg.mha", "a_uncertainty.mha"]
    again = predict("-i", str(folder), "-o", str(folder), "--model", str(tiny_model), *FAST)
    assert again.returncode == 0, again.stderr
    notes = [line for line in again.stderr.splitlines() if line.startswith("spinesegdiff: note:")]
    assert "error" not in again.stderr
    assert notes == [f"spinesegdiff: note: {folder / name}: skipped: an output of spinesegdiff (listed in a.json)"
                     for name in ("a_seg.mha", "a_uncertainty.mha")]
    assert sorted(p.name for p in folder.iterdir()) == written, "no a_seg_seg.mha"
    assert json.loads((folder / "a.json").read_text(encoding="utf-8"))["input"] == str(folder / "a.mha")


def test_a_report_claims_only_its_own_stems_outputs(tmp_path: Path) -> None:
    outputs = {"segmentation": "a_seg.mha", "uncertainty": "a_uncertainty.nii.gz", "overlay": "a_overlay.png",
               "report": "a.json", "stolen": "b.mha", "other": "b_seg.mha", "path": "../x/a_seg.nrrd"}
    (tmp_path / "a.json").write_text(json.dumps({"outputs": outputs}))
    assert sidecar_outputs(tmp_path / "a.json") == {"a_seg.mha", "a_uncertainty.nii.gz", "a_overlay.png",
                                                   "a.json"}
    (tmp_path / "c.json").write_text(json.dumps({"outputs": ["c_seg.mha"]}))
    (tmp_path / "d.json").write_text("{not json")
    assert sidecar_outputs(tmp_path / "c.json") == set() and sidecar_outputs(tmp_path / "d.json") == set()
    write_scan(tmp_path / "b.mha")
    assert scan_inputs(tmp_path).scans == (tmp_path / "b.mha",), "b.mha is not a's to claim"


def test_an_earlier_output_named_alone_is_refused(tmp_path: Path) -> None:
    uncertainty = tmp_path / "a_uncertainty.mha"
    write_image(uncertainty, np.random.default_rng(0).random((3, 160, 120), dtype=np.float32),
                make_phantom(**SHAPE).geometry)
    assert scan_inputs(uncertainty).scans == (uncertainty,)  # without its report, a float image like a scan
    (tmp_path / "a.json").write_text(json.dumps({"outputs": {"segmentation": "a_seg.mha",
                                                             "uncertainty": "a_uncertainty.mha"}}))
    with pytest.raises(InputError, match=r"a_uncertainty\.mha: is an output of spinesegdiff \(listed in a\.json\)"):
        scan_inputs(uncertainty)


# 3. label maps beside the scans

def test_label_maps_are_skipped_with_a_note(tmp_path: Path) -> None:
    write_scan(tmp_path / "a.mha")
    _label_map(tmp_path / "a_msk.nii.gz")
    _label_map(tmp_path / "b_vert.nrrd", values=(0, 41, 42, 100), dtype=np.uint16)
    found = scan_inputs(tmp_path)
    assert found.scans == (tmp_path / "a.mha",)
    assert [str(s) for s in found.skipped] == [
        f"{tmp_path / 'a_msk.nii.gz'}: skipped: a label map (values 0, 1, 2, 3), not a scan",
        f"{tmp_path / 'b_vert.nrrd'}: skipped: a label map (values 0, 41, 42, 100), not a scan"]
    assert not any(s.error for s in found.skipped)
    with pytest.raises(InputError, match=r"a_msk\.nii\.gz: is a label map \(values 0, 1, 2, 3\), not a scan"):
        scan_inputs(tmp_path / "a_msk.nii.gz")


def test_what_counts_as_a_label_map(tmp_path: Path) -> None:
    assert label_values(_label_map(tmp_path / "sixteen.mha", values=tuple(range(16)))) == tuple(range(16))
    assert label_values(_label_map(tmp_path / "seventeen.mha", values=tuple(range(17)))) is None
    assert label_values(_label_map(tmp_path / "negative.mha", values=(-1, 0, 1), dtype=np.int16)) is None
    assert label_values(_label_map(tmp_path / "floats.mha", values=(0.0, 1.0), dtype=np.float32)) is None
    assert label_values(_label_map(tmp_path / "constant.mha", values=(0,))) is None  # refused as a scan later
    phantom = make_phantom(**SHAPE)
    write_image(tmp_path / "scan8.mha", (phantom.image * 255).astype(np.uint8), phantom.geometry)
    assert label_values(tmp_path / "scan8.mha") is None  # an 8-bit scan has many more grey values
    (tmp_path / "junk.mha").write_text("not an image")
    assert label_values(tmp_path / "junk.mha") is None


def test_only_label_maps_is_a_folder_without_scans(tmp_path: Path) -> None:
    _label_map(tmp_path / "a_msk.mha")
    with pytest.raises(InputError, match=r"folder holds no scans .* \(1 skipped: label maps or outputs"):
        scan_inputs(tmp_path)


# 4. two inputs with one stem

def test_inputs_sharing_a_stem_get_distinct_outputs(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_scan(folder / "a.mha")
    write_scan(folder / "a.nii.gz", seed=1)
    write_scan(folder / "b.mha", seed=2)
    plan = plan_outputs(scan_inputs(folder), tmp_path / "out", suffix_of=lambda scan: ".mha")
    assert [(p.scan.name, p.stem) for p in plan] == [("a.mha", "a_mha"), ("a.nii.gz", "a_nii_gz"), ("b.mha", "b")]
    out = tmp_path / "out"
    result = predict("-i", str(folder), "-o", str(out), "--model", str(tiny_model), *FAST)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{end}" for stem, ext in (("a_mha", ".mha"), ("a_nii_gz", ".nii.gz"), ("b", ".mha"))
        for end in (".json", "_overlay.png", f"_seg{ext}", f"_uncertainty{ext}"))
    assert json.loads((out / "a_nii_gz.json").read_text(encoding="utf-8"))["input"] == str(folder / "a.nii.gz")


def test_inputs_that_would_still_write_one_file_refuse_the_batch(tmp_path: Path) -> None:
    write_scan(tmp_path / "a.nii")
    write_scan(tmp_path / "b.nii", seed=1).rename(tmp_path / "a.NII")  # one ending in two cases: both would be a_nii
    clash = r"a\.(nii|NII): and .*a\.(NII|nii) would both write .*a_nii_seg\.nii: rename one"
    with pytest.raises(InputError, match=clash):
        plan_outputs(scan_inputs(tmp_path), tmp_path / "out", suffix_of=lambda scan: ".nii")


# 5. image endings in capitals

def test_upper_case_endings_are_recognised(tmp_path: Path) -> None:
    write_scan(tmp_path / "upper.mha").rename(tmp_path / "UPPER.MHA")  # write_image cannot write capitals (yet)
    _label_map(tmp_path / "mask.mha").rename(tmp_path / "MASK.MHA")
    found = scan_inputs(tmp_path)
    assert found.scans == (tmp_path / "UPPER.MHA",)  # the label map was read despite its capitals
    assert "MASK.MHA: skipped: a label map" in str(found.skipped[0])


def test_an_upper_case_scan_is_read(tmp_path: Path) -> None:
    from spinesegdiff.pipelines.predict import load_scan

    scan = load_scan(write_scan(tmp_path / "upper.mha").rename(tmp_path / "UPPER.MHA"))
    assert scan.stem == "UPPER" and scan.image.shape == SHAPE["shape"]


# 6. broken symbolic links

def test_a_broken_link_is_an_error_for_that_file_and_the_batch_goes_on(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    write_scan(folder / "a.mha")
    (folder / "b.mha").symlink_to(tmp_path / "gone.mha")
    (folder / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not an image name: not an input at all
    found = scan_inputs(folder)
    assert found.scans == (folder / "a.mha",)
    assert [(str(s), s.error) for s in found.skipped] == [
        (f"{folder / 'b.mha'}: broken symbolic link (its target {tmp_path / 'gone.mha'} does not exist)", True)]
    out = tmp_path / "out"
    result = predict("-i", str(folder), "-o", str(out), "--model", str(tiny_model), *FAST)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"spinesegdiff: error: {folder / 'b.mha'}: broken symbolic link (its target {tmp_path / 'gone.mha'} does "
        "not exist)", "spinesegdiff: 1 of 2 scans failed"]
    assert (out / "a_seg.mha").exists()
    with pytest.raises(InputError, match=r"b\.mha: broken symbolic link"):
        scan_inputs(folder / "b.mha")
    with pytest.raises(MissingInputError, match="absent: no such file or folder"):
        scan_inputs(tmp_path / "absent")


# 7. the output folder

def test_an_output_folder_that_is_a_file_is_one_error_before_any_work(tiny_model: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    import spinesegdiff.pipelines.predict as predict_module

    folder = tmp_path / "scans"
    folder.mkdir()
    for k in range(3):
        write_scan(folder / f"s{k}.mha", seed=k)
    target = tmp_path / "out.txt"
    target.write_text("a file")
    monkeypatch.setattr(predict_module, "load_scan", lambda *a, **k: pytest.fail("a scan was read"))
    _one_error(predict("-i", str(folder), "-o", str(target), "--model", str(tiny_model), *FAST),
               "out.txt: is a file, not a folder")
    assert target.read_text(encoding="utf-8") == "a file"
    _one_error(predict("-i", str(folder), "-o", str(target / "sub"), "--model", str(tiny_model), *FAST),
               "out.txt: is a file, so the output folder")


def test_output_folder_checks(tmp_path: Path) -> None:
    check_output_folder(tmp_path)  # writable and there
    check_output_folder(tmp_path / "new" / "deeper")  # can be created
    assert not (tmp_path / "new").exists(), "checking creates nothing"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="dangling: output folder is a broken symbolic link"):
        check_output_folder(tmp_path / "dangling")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(InputError, match="locked: output folder is not writable"):
            check_output_folder(locked)
        with pytest.raises(InputError, match="cannot create the output folder"):
            check_output_folder(locked / "out")
    finally:
        locked.chmod(0o700)


# 8. options out of range

@pytest.mark.parametrize(("options", "message"), [
    (["--samples", "100000"], "--samples: must lie in 1..64"),
    (["--samples", "0"], "--samples: must be positive, got 0"),
    (["--steps", "1001"], "--steps: must lie in 1..1000"),
    (["--steps", "0", "--fuse-steps", "1"], "--steps: must be positive, got 0"),
    (["--steps", "-3", "--fuse-steps", "1"], "--steps: must be positive, got -3"),
    (["--seed", "99999999999999999999"], "--seed: must lie in 0..2**63 - 1"),
    (["--seed", "-1"], "--seed: must lie in 0..2**63 - 1, got -1"),
    (["--steps", "4", "--fuse-steps", "5"], "--fuse-steps: must lie in 1..--steps (4), got 5"),
    (["--preseg", "unet", "--preseg-steps", "-1"], "--preseg-steps: must lie in 0..999, got -1"),
    (["--preseg", "unet", "--preseg-steps", "1000"], "--preseg-steps: must lie in 0..999, got 1000"),
])
def test_options_out_of_range_are_one_line_before_any_work(options: list[str], message: str,
                                                           tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "a.mha")
    out = tmp_path / "out"
    _one_error(predict("-i", str(scan), "-o", str(out), *options), message)
    assert not out.exists()


def test_steps_beyond_the_models_schedule_are_refused_before_sampling(tmp_path: Path) -> None:
    short = tiny_checkpoint(tmp_path / "short.pt", num_train_timesteps=100)
    scan = write_scan(tmp_path / "a.mha")
    out = tmp_path / "out"
    _one_error(predict("-i", str(scan), "-o", str(out), "--model", str(short), "--steps", "500", "--fuse-steps",
                       "1", "--samples", "1", "--backend", "torch", "--device", "cpu"),
               "num_steps must be at most the model's 100 noise steps, got 500")
    assert not out.exists() or not any(out.iterdir())
    SamplerSettings(num_steps=100).check_schedule(100)
    with pytest.raises(InvalidSetting, match=r"preseg_steps \(T_pre\) must be below the model's 100"):
        SamplerSettings(preseg_steps=100).check_schedule(100)


@pytest.mark.parametrize(("settings", "message"), [
    ({"num_samples": 2.5}, "num_samples must be an integer, got 2.5"),
    ({"num_steps": True}, "num_steps must be an integer, got True"),
    ({"images_per_batch": 65}, "images_per_batch must lie in 1..64"),
    ({"eta": -0.1}, r"eta must lie in \[0, 1\]"),
    ({"eta": float("nan")}, r"eta must lie in \[0, 1\], got nan"),
    ({"fusion": "mean"}, "fusion must be one of"),
    ({"seed": 2**63}, "seed must lie in 0..2"),
])
def test_sampler_settings_refuse_what_the_sampler_cannot_run(settings: dict, message: str) -> None:
    with pytest.raises(InvalidSetting, match=message) as caught:
        SamplerSettings(**settings)
    assert caught.value.field == next(iter(settings))
    assert SamplerSettings(num_samples=64, seed=2**63 - 1, num_steps=1000, eta=1.0).num_samples == 64


# 9. the Python API's image argument

GEOMETRY = Geometry(spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.mark.parametrize(("image", "error", "message"), [
    ([[1, 2], [3, 4]], TypeError, "image must be a path .* or a tuple \\(array_zyx, Geometry\\), got list"),
    ({"array": 1}, TypeError, "got dict"),
    ((np.ones((2, 2, 2)), GEOMETRY, "extra"), TypeError, "got a tuple of 3 items"),
    ((np.ones((2, 2, 2)), {"spacing": (1, 1, 1)}), TypeError, "second item .* must be a spinesegdiff Geometry .*"
                                                               "got dict"),
    (([[[1.0]]], GEOMETRY), TypeError, "first item .* must be a numpy array"),
    ((np.zeros((0, 4, 4)), GEOMETRY), InputError, r"array is empty \(shape \(0, 4, 4\)\)"),
    ((np.ones((2, 4, 4), dtype=np.complex64), GEOMETRY), InputError, r"array is complex \(complex64\)"),
    ((np.ones((4, 4)), GEOMETRY), InputError, r"array is 2D \(shape \(4, 4\)\), a 3D volume"),
    ((np.array([["a"]] * 2, dtype=object)[None], GEOMETRY), TypeError, "must hold numbers"),
    ((np.ones((2, 4, 4)), Geometry(spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1, 0, 0, 1))), InputError,
     "geometry is 2D"),
])
def test_the_api_says_what_image_it_expects(image, error: type, message: str) -> None:
    from spinesegdiff import segment
    from spinesegdiff.pipelines.predict import load_scan

    with pytest.raises(error, match=message):
        checked_image(image)
    with pytest.raises(error, match=message):
        load_scan(image)
    with pytest.raises(error, match=message):
        segment(image, device="cpu", quiet=True)


def test_the_api_takes_paths_and_arrays(tmp_path: Path) -> None:
    assert checked_image(str(tmp_path / "a.mha")) == tmp_path / "a.mha"
    array = np.ones((2, 4, 4), dtype=np.int16)
    checked, geometry = checked_image((array, GEOMETRY))
    assert checked is array and geometry is GEOMETRY


# a doubtful result: written, with one warning line and the verdict in its JSON

def test_a_doubtful_result_is_written_with_one_warning_line(tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    import spinesegdiff.pipelines.predict as predict_module
    from spinesegdiff.pipelines.checks import check_spine_quality

    doubtful = {"verdict": "doubtful", "reasons": ["IVD_mm2 300 < 400"], "measures": {"IVD_mm2": 300.0}}
    monkeypatch.setattr(predict_module, "check_spine_quality", check_spine_quality)
    monkeypatch.setattr(predict_module, "spine_quality", lambda labels: doubtful)
    result = predict("-i", str(write_scan(tmp_path / "a.mha")), "-o", str(tmp_path / "out"), "--model",
                     str(tiny_model), *FAST, "--quiet")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("spinesegdiff: warning: ")]
    assert len(warnings) == 1 and str(tmp_path / "a.mha") in warnings[0] and "IVD_mm2 300 < 400" in warnings[0]
    assert "Warning" not in result.stderr.replace("spinesegdiff: warning", "")  # no Python warning text
    report = json.loads((tmp_path / "out" / "a.json").read_text(encoding="utf-8"))
    assert report["quality"] == doubtful


def test_fewer_steps_than_the_fused_default_fuse_every_step_unless_asked_otherwise() -> None:
    from spinesegdiff.cli import build_parser
    from spinesegdiff.cli.options import sampler_settings

    parser = build_parser()
    for options, fused in ((["--steps", "1"], 1), (["--steps", "4"], 4), ([], 10), (["--steps", "20"], 10),
                           (["--steps", "4", "--fuse-steps", "2"], 2)):
        args = parser.parse_args(["predict", "-i", "x.mha", "-o", "out", *options])
        assert sampler_settings(args).resolved(refining=False).fuse_steps == fused, options
    refining = sampler_settings(parser.parse_args(["predict", "-i", "x.mha", "-o", "out", "--preseg-steps", "30"]))
    assert refining.fuse_steps is None  # the pipeline's default, filled in once it is known to refine
    assert refining.resolved(refining=True).fuse_steps == 1
