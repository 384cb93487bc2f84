"""Cohorts with ``spinesegdiff predict`` (issue 15): ``--shard K/N``, ``--skip-existing`` and the summary CSV.

Shards are round-robin over the name-ordered plan: every scan in exactly one shard, the same on every run. A
complete earlier set (all four files, listed by its JSON) is skipped with a note; an incomplete one is redone.
The summary has one row per scan of the run; shards write ``summary-K-of-N.csv`` each.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predict_helpers import FAST, SHAPE, predict, write_scan
from spinesegdiff.data.io import write_image
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.files import StagedFiles
from spinesegdiff.pipelines.inputs import (
    PlannedScan,
    Shard,
    complete_outputs,
    parse_shard,
    plan_outputs,
    scan_inputs,
    select_shard,
)
from spinesegdiff.pipelines.summary import COLUMNS, summary_row

pytestmark = pytest.mark.usefixtures("spine_judgement_off")


def _noise(path: Path) -> Path:
    """A scan refused before inference (it looks like noise): a failed row."""
    phantom = make_phantom(**SHAPE)
    noise = np.random.default_rng(0).integers(0, 1000, phantom.image.shape).astype(np.int16)
    write_image(path, noise, phantom.geometry)
    return path


def _cohort(folder: Path, names=("a", "b", "c")) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_scan(folder / f"{name}.mha", seed=k) for k, name in enumerate(names)]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def _state(files) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


# --- --shard K/N --------------------------------------------------------------------------------------------

def _fake_plan(count: int) -> tuple[PlannedScan, ...]:
    return tuple(PlannedScan(scan=Path(f"s{k:02d}.mha"), stem=f"s{k:02d}", outputs={}) for k in range(count))


@pytest.mark.parametrize("scans", [0, 1, 5, 7, 12])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_are_disjoint_and_together_the_whole_plan(scans: int, count: int) -> None:
    plan = _fake_plan(scans)
    shards = [select_shard(plan, Shard(k, count)) for k in range(1, count + 1)]
    together = [p.scan for shard in shards for p in shard]
    assert sorted(together) == [p.scan for p in plan] and len(set(together)) == len(together)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1, "round-robin: sizes differ by at most one"
    assert shards == [select_shard(_fake_plan(scans), Shard(k, count)) for k in range(1, count + 1)], "stable"
    assert select_shard(plan, None) == plan


def test_a_shard_is_round_robin_over_the_names() -> None:
    assert [p.stem for p in select_shard(_fake_plan(7), Shard(2, 3))] == ["s01", "s04"]
    assert [p.stem for p in select_shard(_fake_plan(7), Shard(1, 3))] == ["s00", "s03", "s06"]


def test_parse_shard() -> None:
    assert parse_shard("2/3") == Shard(2, 3) and parse_shard(" 3 / 3 ") == Shard(3, 3)
    assert parse_shard("1/1") == Shard(1, 1) and parse_shard(None) is None
    assert str(Shard(2, 5)) == "2/5"


@pytest.mark.parametrize("text", ["0/3", "4/3", "a/b", "1/0", "0/0", "1/", "/3", "-1/3", "1/3/5", "1.5/3", ""])
def test_a_bad_shard_is_refused(text: str) -> None:
    with pytest.raises(SpineSegDiffError, match=r"^--shard '.*': expected K/N with 1 <= K <= N"):
        parse_shard(text)


@pytest.mark.parametrize("text", ["0/3", "4/3", "a/b", "1/0"])
def test_a_bad_shard_is_one_line_before_any_work(tmp_path: Path, text: str) -> None:
    _cohort(tmp_path / "scans", names=("a",))
    out = tmp_path / "out"
    result = predict("-i", str(tmp_path / "scans"), "-o", str(out), "--model", str(tmp_path / "absent.pt"),
                     "--shard", text, *FAST)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"spinesegdiff: error: --shard {text!r}: expected K/N with "
                                                  "1 <= K <= N, such as 1/4 (shard K of N, counted from 1)"]
    assert not out.exists(), "nothing is created"


def test_shards_into_one_folder_segment_every_scan_once(tiny_model: Path, tmp_path: Path) -> None:
    scans = _cohort(tmp_path / "scans", names=("a", "b", "c"))
    out = tmp_path / "out"
    for k in (1, 2):
        result = predict("-i", str(tmp_path / "scans"), "-o", str(out), "--model", str(tiny_model),
                         "--shard", f"{k}/2", *FAST)
        assert result.returncode == 0, result.stderr
    first, second = _rows(out / "summary-1-of-2.csv"), _rows(out / "summary-2-of-2.csv")
    assert [Path(r["input"]).name for r in first] == ["a.mha", "c.mha"]
    assert [Path(r["input"]).name for r in second] == ["b.mha"]
    assert {r["status"] for r in first + second} == {"written"}
    assert not (out / "summary.csv").exists(), "a shard writes only its own summary"
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "b.json", "c.json"]
    for scan in scans:
        assert json.loads((out / f"{scan.stem}.json").read_text(encoding="utf-8"))["input"] == str(scan)
    joined = subprocess.run("{ head -n 1 summary-1-of-2.csv; tail -q -n +2 summary-*-of-2.csv; } > summary.csv",
                            shell=True, cwd=out, check=True)
    assert joined.returncode == 0
    assert sorted(Path(r["input"]).name for r in _rows(out / "summary.csv")) == ["a.mha", "b.mha", "c.mha"]


def test_a_shard_without_scans_writes_a_summary_with_its_header(tiny_model: Path, tmp_path: Path) -> None:
    _cohort(tmp_path / "scans", names=("a",))
    out = tmp_path / "out"
    result = predict("-i", str(tmp_path / "scans"), "-o", str(out), "--model", str(tiny_model),
                     "--shard", "2/2", *FAST)
    assert result.returncode == 0, result.stderr
    assert _rows(out / "summary-2-of-2.csv") == []
    assert not (out / "a.json").exists()


# --- --skip-existing ---------------------------------------------------------------------------------------

def test_skip_existing_leaves_complete_sets_and_redoes_incomplete_ones(tiny_model: Path, tmp_path: Path) -> None:
    _cohort(tmp_path / "scans", names=("a", "b"))
    out = tmp_path / "out"
    args = ["-i", str(tmp_path / "scans"), "-o", str(out), "--model", str(tiny_model), *FAST, "--summary"]
    assert predict(*args).returncode == 0
    assert [r["status"] for r in _rows(out / "summary.csv")] == ["written", "written"]
    (out / "b.json").unlink()  # b's set is now incomplete: its files without the report that lists them
    kept = _state(out.glob("a*"))
    result = predict(*args, "--skip-existing")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert notes == [f"spinesegdiff: note: {tmp_path / 'scans' / 'a.mha'}: skipped: its outputs are complete "
                     "(a.json lists them)"]
    assert _state(out.glob("a*")) == kept, "a complete set is not written again"
    assert (out / "b.json").is_file(), "an incomplete set is done again"
    rows = {Path(r["input"]).name: r for r in _rows(out / "summary.csv")}
    assert rows["a.mha"]["status"] == "skipped" and rows["b.mha"]["status"] == "written"
    report = json.loads((out / "a.json").read_text(encoding="utf-8"))
    assert float(rows["a.mha"]["VB_area_mm2"]) == report["structures"]["VB"]["area_mm2"]
    assert rows["a.mha"]["quality"] == report["quality"]["verdict"] != ""
    assert rows["b.mha"]["quality"] == json.loads((out / "b.json").read_text(encoding="utf-8"))["quality"]["verdict"]
    assert rows["a.mha"]["seconds"] == "0.00" and float(rows["b.mha"]["seconds"]) > 0
    assert float(rows["b.mha"]["uncertainty_mean"]) == json.loads((out / "b.json").read_text(encoding="utf-8"))[
        "structures"]["overall_uncertainty_mean"]
    again = predict(*args)  # without --skip-existing every scan is segmented again
    assert again.returncode == 0 and "skipped" not in again.stderr
    assert [r["status"] for r in _rows(out / "summary.csv")] == ["written", "written"]


def test_a_set_of_another_format_or_scan_is_not_complete(tiny_model: Path, tmp_path: Path) -> None:
    _cohort(tmp_path / "scans", names=("a",))
    out = tmp_path / "out"
    assert predict("-i", str(tmp_path / "scans"), "-o", str(out), "--model", str(tiny_model), *FAST).returncode == 0
    inputs = scan_inputs(tmp_path / "scans")
    (planned,) = plan_outputs(inputs, out, suffix_of=lambda scan: ".mha")
    assert complete_outputs(planned)
    (as_nifti,) = plan_outputs(inputs, out, suffix_of=lambda scan: ".nii.gz")
    assert not complete_outputs(as_nifti), "--format nii.gz: the .mha set is not its outputs"
    report = json.loads((out / "a.json").read_text(encoding="utf-8"))
    (out / "a.json").write_text(json.dumps({**report, "input": str(tmp_path / "other" / "a.nrrd")}))
    assert not complete_outputs(planned), "the set of another scan with the same stem"
    unlisted = {k: v for k, v in report["outputs"].items() if k != "uncertainty"}
    (out / "a.json").write_text(json.dumps({**report, "outputs": unlisted}))
    assert not complete_outputs(planned), "a file the report does not list is not part of the set"
    (out / "a.json").write_text(json.dumps(report))
    assert complete_outputs(planned)
    (out / "a_overlay.png").unlink()
    assert not complete_outputs(planned), "a file missing"


def test_skip_existing_into_the_input_folder(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    _cohort(folder, names=("a", "b"))
    args = ["-i", str(folder), "-o", str(folder), "--model", str(tiny_model), *FAST]
    assert predict(*args).returncode == 0
    kept = _state(p for p in folder.iterdir() if p.name != "summary.csv")
    result = predict(*args, "--skip-existing")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert sum("skipped: an output of spinesegdiff" in line for line in lines) == 4, "earlier outputs left out"
    assert sum("skipped: its outputs are complete" in line for line in lines) == 2
    assert _state(p for p in folder.iterdir() if p.name != "summary.csv") == kept, "nothing segmented again"
    assert [r["status"] for r in _rows(folder / "summary.csv")] == ["skipped", "skipped"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_set_killed_while_published_into_the_input_folder_is_finished_then_skipped(
        tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    _cohort(folder, names=("a",))
    args = ["-i", str(folder), "-o", str(folder), "--model", str(tiny_model), *FAST]
    assert predict(*args).returncode == 0
    names = ["a_seg.mha", "a_uncertainty.mha", "a_overlay.png", "a.json"]
    kept = _state(folder / name for name in names)
    stage = StagedFiles.create(folder)  # a kill -9 after the first rename: a_seg.mha in place, the rest staged
    for name in names[1:]:
        os.replace(folder / name, stage.files / name)
    (stage.staging / "publish.json").write_text(json.dumps({"files": names}))
    stage.staging.rename(folder / stage.staging.name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-"))
    result = predict(*args, "--skip-existing")
    assert result.returncode == 0, result.stderr
    assert "a.mha: skipped: its outputs are complete" in result.stderr
    assert {name: state[0] for name, state in _state(folder / name for name in names).items()} == {
        name: state[0] for name, state in kept.items()}
    assert not [p for p in folder.iterdir() if p.name.startswith(".spinesegdiff-staging-")]


# --- the summary -------------------------------------------------------------------------------------------

def test_the_summary_has_a_row_per_scan_with_failures(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    _cohort(folder, names=("a",))
    _noise(folder / "b.mha")
    out = tmp_path / "out"
    result = predict("-i", str(folder), "-o", str(out), "--model", str(tiny_model), "--volume", *FAST, "--summary")
    assert result.returncode == 2
    rows = _rows(out / "summary.csv")
    assert [(Path(r["input"]).name, r["status"]) for r in rows] == [("a.mha", "written"), ("b.mha", "failed")]
    written, failed = rows
    assert written["VB_area_mm2"] == "" and float(written["VB_volume_mm3"]) >= 0, "--volume: volumes"
    assert written["problem"] == "" and "noise" in failed["problem"]
    assert failed["VB_volume_mm3"] == failed["quality"] == ""


def test_a_file_named_like_the_summary_is_never_replaced(tiny_model: Path, tmp_path: Path) -> None:
    _cohort(tmp_path / "scans", names=("a",))
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.csv").write_text("patient,age\n1,50\n")
    result = predict("-i", str(tmp_path / "scans"), "-o", str(out), "--model", str(tiny_model), *FAST, "--summary")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"spinesegdiff: error: {out / 'summary.csv'}: is not a "
                                                  "spinesegdiff summary and would be replaced: move it or choose "
                                                  "another output folder"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]
    assert (out / "summary.csv").read_text(encoding="utf-8") == "patient,age\n1,50\n"


def test_summary_row_refuses_an_unknown_status(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="status must be one of"):
        summary_row(tmp_path / "a.mha", "done")
    row = summary_row(tmp_path / "a.mha", "failed", report=tmp_path / "absent.json", problem="x")
    assert row["status"] == "failed" and row["quality"] == "" and row["problem"] == "x"


def test_a_plain_run_writes_no_summary(tiny_model: Path, tmp_path: Path) -> None:
    _cohort(tmp_path / "scans", names=("a",))
    out = tmp_path / "out"
    assert predict("-i", str(tmp_path / "scans"), "-o", str(out), "--model", str(tiny_model), *FAST).returncode == 0
    assert not (out / "summary.csv").exists()
    assert predict("-i", str(tmp_path / "scans"), "-o", str(out), "--model", str(tiny_model), *FAST,
                   "--skip-existing").returncode == 0
    assert [r["status"] for r in _rows(out / "summary.csv")] == ["skipped"]
