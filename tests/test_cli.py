"""The command line: preprocess and split on real and synthetic folders, and every bad input."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spinesegdiff.cli import main
from spinesegdiff.data.cache import load_cache
from spinesegdiff.data.io import Geometry, read_image, write_image


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``spinesegdiff ARGS`` in this process (what a user's shell sees: exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse: --help, or a usage error
            code = exit_.code
    return subprocess.CompletedProcess(["spinesegdiff", *args], code, stdout.getvalue(), stderr.getvalue())


def test_help_is_instant_and_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "preprocess" in result.stdout and "split" in result.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, spinesegdiff.cli; spinesegdiff.cli.build_parser(); "
            "print('torch' in sys.modules, 'SimpleITK' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False False"


def test_preprocess_synthetic_spider_folder(make_spider_folder, tmp_path: Path, capsys) -> None:
    root = make_spider_folder([("1", "t1"), ("1", "t2"), ("2", "t2"), ("3", "t1")])
    out = tmp_path / "cache"
    assert main(["preprocess", "--data", str(root), "--out", str(out), "--quiet"]) == 0
    assert "cached 4 slices of 4 series from 3 patients" in capsys.readouterr().out
    cache = load_cache(out)
    assert cache.images.shape == (4, 320, 320) and cache.images.dtype == np.uint8
    assert [e.case for e in cache.entries] == ["1_t1", "1_t2", "2_t2", "3_t1"]
    assert all(e.central for e in cache.entries)
    assert set(np.unique(cache.labels)) == {0, 1, 2, 3}
    assert (
        main(
            [
                "preprocess",
                "--data",
                str(root),
                "--out",
                str(out),
                "--quiet",
                "--contrast",
                "T1w",
                "--all-slices",
            ]
        )
        == 0
    )
    cache = load_cache(out)
    assert len(cache) == 10 and {e.contrast for e in cache.entries} == {"t1"}
    assert len(cache.indices(central_only=True)) == 2
    assert cache.indices(patients=["3"]) == list(range(5, 10))


@pytest.mark.slow
def test_preprocess_real_subset(spider_subset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    assert main(["preprocess", "--data", str(spider_subset), "--out", str(out), "--quiet"]) == 0
    cache = load_cache(out)
    assert len(cache) == 33 and not any(e.oblique for e in cache.entries)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["settings"]["contrast_set"] == "T1w+T2w"
    first = cache.entries[0]
    assert cache.grids[first.case].num_sagittal == 9 and first.slice_index == 4
    # every structure is visible on the central slice of every patient
    for labels in cache.labels:
        assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_split_command(make_spider_folder, tmp_path: Path, capsys) -> None:
    root = make_spider_folder([(str(p), "t2") for p in range(1, 7)], shape=(2, 32, 32))
    out = tmp_path / "splits_final.json"
    assert main(["split", "--data", str(root), "--out", str(out), "--folds", "3"]) == 0
    split = json.loads(out.read_text(encoding="utf-8"))
    assert len(split) == 3 and all(len(f["test"]) == 2 for f in split)


# --- bad input: one line, exit 2, no traceback, nothing written --------------------------------------------------


def _assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spinesegdiff: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _preprocess(root: Path, out: Path) -> subprocess.CompletedProcess:
    return run_cli("preprocess", "--data", str(root), "--out", str(out), "--quiet")


def test_missing_data_folder(tmp_path: Path) -> None:
    _assert_clean_failure(_preprocess(tmp_path / "absent", tmp_path / "out"), "absent: no such data folder")
    assert not (tmp_path / "out").exists()


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _assert_clean_failure(_preprocess(tmp_path / "empty", tmp_path / "out"), "not a SPIDER folder")
    (tmp_path / "empty" / "images").mkdir()
    _assert_clean_failure(_preprocess(tmp_path / "empty", tmp_path / "out"), "no SPIDER series")
    assert not (tmp_path / "out").exists()


BAD_CASES = [
    "not_an_image",
    "image_2d",
    "shape_mismatch",
    "geometry_mismatch",
    "unknown_code",
    "nan_image",
    "constant_image",
    "axial",
]


@pytest.mark.parametrize("problem", BAD_CASES)
def test_bad_series_is_named_and_nothing_is_written(problem: str, make_spider_folder, tmp_path: Path) -> None:
    root = make_spider_folder([("1", "t2"), ("2", "t2")], shape=(3, 64, 48))
    image_path, mask_path = root / "images" / "2_t2.mha", root / "masks" / "2_t2.mha"
    image, geometry = read_image(image_path)
    mask, _ = read_image(mask_path)
    expected = {
        "not_an_image": ("2_t2.mha: not a readable image",),
        "image_2d": ("2_t2.mha: image is 2D, a 3D volume is expected",),
        "shape_mismatch": ("masks/2_t2.mha: mask shape", "differs from image 2_t2.mha"),
        "geometry_mismatch": ("masks/2_t2.mha: mask geometry differs",),
        "unknown_code": ("masks/2_t2.mha: unknown SPIDER label code(s) 77",),
        "nan_image": ("images/2_t2.mha: image holds NaN",),
        "constant_image": ("images/2_t2.mha: image is constant",),
        "axial": ("images/2_t2.mha: scan is axial, not sagittal",),
    }[problem]
    if problem == "not_an_image":
        image_path.write_bytes(b"definitely not a MetaImage")
    elif problem == "image_2d":
        sitk.WriteImage(sitk.GetImageFromArray(image[0]), str(image_path))
    elif problem == "shape_mismatch":
        write_image(mask_path, mask[:, :-1], geometry)
    elif problem == "geometry_mismatch":
        write_image(mask_path, mask, Geometry(geometry.spacing, (0.0, 9.0, 0.0), geometry.direction))
    elif problem == "unknown_code":
        mask[0, 0, 0] = 77
        write_image(mask_path, mask, geometry)
    elif problem == "nan_image":
        floats = image.astype(np.float32)
        floats[1, 5, 5] = np.nan
        write_image(image_path, floats, geometry)
    elif problem == "constant_image":
        write_image(image_path, np.full_like(image, 5), geometry)
    elif problem == "axial":
        axial = Geometry((0.8, 0.8, 5.0), geometry.origin, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        write_image(image_path, image, axial)
        write_image(mask_path, mask, axial)
    out = tmp_path / "cache"
    _assert_clean_failure(_preprocess(root, out), *expected)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["spider"], "no staging folder may be left behind"


def test_existing_non_cache_folder_is_not_overwritten(make_spider_folder, tmp_path: Path) -> None:
    root = make_spider_folder([("1", "t2"), ("2", "t2")], shape=(2, 32, 32))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    _assert_clean_failure(_preprocess(root, precious), "is not a cache this package wrote")
    assert (precious / "thesis.tex").read_text(encoding="utf-8") == "do not delete"


def test_folder_with_a_foreign_manifest_is_not_overwritten(make_spider_folder, tmp_path: Path) -> None:
    root = make_spider_folder([("1", "t2"), ("2", "t2")], shape=(2, 32, 32))
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text('{"name": "my web app"}')
    (site / "index.html").write_text("<html></html>")
    _assert_clean_failure(_preprocess(root, site), "is not a cache this package wrote")
    assert sorted(p.name for p in site.iterdir()) == ["index.html", "manifest.json"]
    out = tmp_path / "cache"
    assert _preprocess(root, out).returncode == 0
    assert _preprocess(root, out).returncode == 0  # a cache of ours is replaced


def test_load_cache_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_cache(tmp_path / "nothing")
    from spinesegdiff.errors import InputError

    with pytest.raises(InputError, match="not a spinesegdiff cache"):
        load_cache(tmp_path)


def _choices(parser) -> dict[tuple[str, str], tuple]:
    """``(command, option) -> choices`` of every option of every command that has choices."""
    import argparse

    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {(name, action.option_strings[-1]): tuple(action.choices)
            for name, command in commands.items() for action in command._actions
            if action.choices is not None and action.option_strings}


def test_cli_choices_come_from_the_registries() -> None:
    from spinesegdiff.cli import build_parser
    from spinesegdiff.data.spider import CONTRAST_SETS
    from spinesegdiff.devices import DEVICE_CHOICES
    from spinesegdiff.diffusion import SCHEDULE_KINDS
    from spinesegdiff.models.config import PRESETS, VARIANTS
    from spinesegdiff.pipelines.settings import BACKENDS, PRECISIONS, PRESEGMENTERS
    from spinesegdiff.training.lr_schedule import LR_SCHEDULES

    registries = {"--device": DEVICE_CHOICES, "--precision": PRECISIONS, "--backend": BACKENDS,
                  "--contrast": CONTRAST_SETS, "--preset": PRESETS, "--variant": VARIANTS,
                  "--schedule": SCHEDULE_KINDS, "--lr-schedule": LR_SCHEDULES}
    choices = _choices(build_parser())
    for (command, option), allowed in choices.items():
        if option in registries:
            assert allowed == tuple(registries[option]), (command, option)
    for command in ("predict", "demo"):
        assert choices[(command, "--preseg")] == PRESEGMENTERS
    seen = {option for _, option in choices}
    assert seen >= {"--device", "--precision", "--backend", "--contrast", "--preset", "--variant", "--preseg",
                    "--schedule", "--lr-schedule"}


def test_format_help_lists_the_output_formats() -> None:
    from spinesegdiff.cli.options import output_format_help
    from spinesegdiff.pipelines.settings import OUTPUT_FORMATS

    assert output_format_help().startswith("output format: nii.gz, mha, nrrd, nii, seg.nrrd, dicom-seg (")
    assert all(f.removeprefix(".") in output_format_help() for f in OUTPUT_FORMATS)
