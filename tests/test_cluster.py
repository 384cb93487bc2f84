"""``predict --engine ray`` (issue 15): a cohort on Ray workers gives the labels of a plain run.

The end-to-end tests start a local Ray instance on 127.0.0.1 with usage statistics off (slow: Ray starts in a
few seconds and each worker loads the shipped models).
"""

from __future__ import annotations

import csv
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from predict_helpers import FAST, predict
from spinesegdiff.data.io import read_image, write_image
from spinesegdiff.errors import InputError, MissingInputError, SpineSegDiffError
from spinesegdiff.pipelines.cluster import RayEngine, ray_scan_runner
from spinesegdiff.pipelines.predict import ScanWork, SegmenterSpec

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def test_ray_engine_checks_its_numbers() -> None:
    assert RayEngine(workers=2, threads=1).local_threads() == 1
    assert RayEngine(workers=1).local_threads() == max(1, os.cpu_count() or 1)
    for bad in (0, -1, 1025, 1.5, True):
        with pytest.raises(SpineSegDiffError, match=r"^--workers: must be a whole number in 1\.\.1024"):
            RayEngine(workers=bad)
        with pytest.raises(SpineSegDiffError, match=r"^--threads: must be a whole number"):
            RayEngine(threads=bad)


def test_without_ray_installed_the_engine_is_one_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(SpineSegDiffError, match=r"--engine ray needs Ray: pip install 'spinesegdiff\[ray\]'"):
        ray_scan_runner(RayEngine(), SegmenterSpec(), ScanWork(Path("out"), False, None, 0))


def test_ray_options_need_the_ray_engine(tmp_path: Path) -> None:
    result = predict("-i", str(tmp_path), "-o", str(tmp_path / "out"), "--workers", "2", *FAST)
    assert result.returncode == 2
    assert result.stderr.strip() == "spinesegdiff: error: --workers only apply with --engine ray"
    result = predict("-i", str(tmp_path), "-o", str(tmp_path / "out"), "--engine", "ray", "--workers", "0", *FAST)
    assert result.stderr.strip() == "spinesegdiff: error: --workers: must be a whole number in 1..1024, got 0"
    assert not (tmp_path / "out").exists()


def _two_scans(folder: Path) -> list[Path]:
    """The shipped sample scan and a darker, noisier copy of it (two different inputs, both real anatomy)."""
    from spinesegdiff.assets import sample_scan_path

    folder.mkdir()
    array, geometry = read_image(sample_scan_path())
    noisy = array.astype(np.float32) * 0.7 + np.random.default_rng(0).normal(0, 4, array.shape)
    write_image(folder / "a.mha", array, geometry)
    write_image(folder / "b.nii.gz", np.clip(noisy, 0, None).astype(np.int16), geometry)
    return [folder / "a.mha", folder / "b.nii.gz"]


def _statuses(path: Path) -> list[tuple[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [(Path(row["input"]).name, row["status"]) for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_ray_workers_write_what_a_plain_run_writes(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'spinesegdiff[ray]'")
    _two_scans(tmp_path / "scans")
    # fp32: on a CPU with AMX or AVX512-BF16, auto precision is bfloat16, whose rounding moves more pixels (25
    # of 327,680 measured on an Intel Xeon with AMX) when only the thread count differs
    quick = ["--samples", "3", "--device", "cpu", "--summary", "--quiet", "--precision", "fp32"]
    plain = predict("-i", str(tmp_path / "scans"), "-o", str(tmp_path / "plain"), *quick)
    assert plain.returncode == 0, plain.stderr
    spread = predict("-i", str(tmp_path / "scans"), "-o", str(tmp_path / "ray"), *quick,
                     "--engine", "ray", "--workers", "2", "--worker-threads", "1")
    assert spread.returncode == 0, spread.stderr
    for stem, ending in (("a", ".mha"), ("b", ".nii.gz")):
        labels, _ = read_image(tmp_path / "plain" / f"{stem}_seg{ending}")
        labels_ray, _ = read_image(tmp_path / "ray" / f"{stem}_seg{ending}")
        # OpenVINO's thread count (here 1 per worker against the plain run's default) changes float rounding:
        # a handful of boundary pixels may flip (0-2 of 327,680 per SPIDER scan measured); nothing more
        assert labels.any() and (labels != labels_ray).sum() <= 20, f"{stem}: Ray changed the labels"
        heat, _ = read_image(tmp_path / "plain" / f"{stem}_uncertainty{ending}")
        heat_ray, _ = read_image(tmp_path / "ray" / f"{stem}_uncertainty{ending}")
        np.testing.assert_allclose(heat_ray, heat, atol=1e-3, err_msg="only thread-count rounding may differ")
    assert _statuses(tmp_path / "ray" / "summary.csv") == [("a.mha", "written"), ("b.nii.gz", "written")]
    again = predict("-i", str(tmp_path / "scans"), "-o", str(tmp_path / "ray"), *quick, "--skip-existing",
                    "--engine", "ray", "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert _statuses(tmp_path / "ray" / "summary.csv") == [("a.mha", "skipped"), ("b.nii.gz", "skipped")]


@pytest.mark.slow
def test_a_model_a_worker_cannot_load_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'spinesegdiff[ray]'")
    _two_scans(tmp_path / "scans")
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_bytes(b"not a checkpoint")
    result = predict("-i", str(tmp_path / "scans"), "-o", str(tmp_path / "out"), "--model", str(not_a_model),
                     "--engine", "ray", "--workers", "1", "--quiet", *FAST[:6])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spinesegdiff: error: {not_a_model}: "), result.stderr
    assert not list((tmp_path / "out").glob("*_seg*")), "nothing written"


@pytest.mark.parametrize("error", [InputError("scan.mha", "image is 2D"), InputError(None, "no path"),
                                   MissingInputError("gone.mha", "file"), SpineSegDiffError("plain")])
def test_user_errors_cross_process_boundaries_intact(error: SpineSegDiffError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    assert getattr(back, "path", None) == getattr(error, "path", None)
