"""``predict --input-list FILE [--where COLUMN=VALUE]`` (issue 15): cohorts that do not live in one folder.

A list is plain text (one path per line, ``#`` comments) or a CSV with a ``path``/``input``/``scan`` column, such
as a cohort's ``summary.csv`` or a review page's triage export; ``--where`` keeps the CSV rows with a value.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from predict_helpers import FAST, predict, write_scan
from spinesegdiff.errors import InputError, MissingInputError
from spinesegdiff.pipelines.input_list import parse_where, read_input_list
from spinesegdiff.pipelines.inputs import plan_outputs, scan_list_inputs

pytestmark = pytest.mark.usefixtures("spine_judgement_off")


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# --- reading a list ------------------------------------------------------------------------------------------

def test_a_plain_list_keeps_its_order_skips_comments_and_blank_lines_and_duplicates(tmp_path: Path) -> None:
    listing = tmp_path / "scans.txt"
    listing.write_text("# cohort A\n/data/b.mha\n\n  /data/a.mha  \n/data/b.mha\n", encoding="utf-8")
    entries = read_input_list(listing)
    assert [e.path for e in entries] == [Path("/data/b.mha"), Path("/data/a.mha")]
    assert [e.line for e in entries] == [2, 4]


def test_a_relative_path_is_found_beside_the_list_first(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "lists").mkdir()
    beside = write_scan(tmp_path / "lists" / "a.mha")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.mha").write_bytes(b"")  # only in the working directory
    listing = tmp_path / "lists" / "scans.txt"
    listing.write_text("a.mha\nb.mha\n", encoding="utf-8")
    assert [e.path for e in read_input_list(listing)] == [beside, Path("b.mha")]


@pytest.mark.parametrize("column", ["path", "input", "Scan"])
def test_a_csv_list_reads_its_path_column(tmp_path: Path, column: str) -> None:
    listing = _write_csv(tmp_path / "cohort.csv", [{"id": "1", column: "/x/one.mha"},
                                                   {"id": "2", column: "/x/two,with comma.mha"}])
    assert [e.path for e in read_input_list(listing)] == [Path("/x/one.mha"), Path("/x/two,with comma.mha")]


def test_where_keeps_the_rows_with_every_value(tmp_path: Path) -> None:
    listing = _write_csv(tmp_path / "triage.csv", [
        {"path": "/x/a.mha", "decision": "accepted", "site": "1"},
        {"path": "/x/b.mha", "decision": "needs_correction", "site": "1"},
        {"path": "/x/c.mha", "decision": "needs_correction", "site": "2"},
    ])
    kept = read_input_list(listing, where=parse_where(["decision=needs_correction"]))
    assert [e.path.name for e in kept] == ["b.mha", "c.mha"]
    kept = read_input_list(listing, where=parse_where(["Decision = needs_correction", "site=2"]))
    assert [e.path.name for e in kept] == ["c.mha"]
    with pytest.raises(InputError, match=r"names no scans with decision=rejected$"):
        read_input_list(listing, where={"decision": "rejected"})


@pytest.mark.parametrize(("text", "problem"), [
    ("", "input list names no scans"),
    ("# only a comment\n\n", "input list names no scans"),
    ("path,decision\n/x/a.mha,accepted,extra\n", "line 2: 3 fields where the header has 2"),
])
def test_a_list_that_names_nothing_or_is_malformed_is_one_line(tmp_path: Path, text: str, problem: str) -> None:
    listing = tmp_path / "scans.csv"
    listing.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=problem) as caught:
        read_input_list(listing)
    assert str(listing) in str(caught.value) and "\n" not in str(caught.value)


def test_a_list_that_is_not_a_text_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError):
        read_input_list(tmp_path / "absent.txt")
    with pytest.raises(InputError, match="is a folder, not a file"):
        read_input_list(tmp_path)
    binary = tmp_path / "scan.mha.txt"
    binary.write_bytes(b"ObjectType = Image\n\x00\x01\x02")
    with pytest.raises(InputError, match="binary file"):
        read_input_list(binary)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("/x/\xe9.mha\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_input_list(latin)


def test_where_needs_a_csv_with_the_column(tmp_path: Path) -> None:
    plain = tmp_path / "scans.txt"
    plain.write_text("/x/a.mha\n", encoding="utf-8")
    with pytest.raises(InputError, match="--where needs a CSV list"):
        read_input_list(plain, where={"status": "failed"})
    table = _write_csv(tmp_path / "s.csv", [{"input": "/x/a.mha", "status": "failed"}])
    with pytest.raises(InputError, match="--where names column 'decision', which the CSV does not have"):
        read_input_list(table, where={"decision": "rejected"})
    with pytest.raises(InputError, match="expected COLUMN=VALUE"):
        parse_where(["status"])


# --- judging the entries as scans ------------------------------------------------------------------------------

def test_listed_entries_are_judged_like_a_folders(tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "a.mha")
    (tmp_path / "notes.txt").write_text("not a scan", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    listing = tmp_path / "scans.txt"
    listing.write_text(f"{scan}\n{tmp_path / 'gone.mha'}\n{tmp_path / 'notes.txt'}\n{tmp_path / 'empty'}\n",
                       encoding="utf-8")
    inputs = scan_list_inputs(listing)
    assert inputs.scans == (scan,)
    problems = {s.path.name: s.problem for s in inputs.skipped}
    assert all(s.error for s in inputs.skipped)
    assert problems == {"gone.mha": "does not exist (line 2 of scans.txt)",
                        "notes.txt": "is not a scan file (.mha, .mhd, .nii, .nii.gz, .nrrd, .nhdr) or a DICOM "
                                     "series folder (line 3 of scans.txt)",
                        "empty": "is a folder without a DICOM series (line 4 of scans.txt)"}


def test_scans_of_several_folders_sharing_a_name_get_distinct_outputs(tmp_path: Path) -> None:
    scans = [write_scan(tmp_path / patient / "t2.mha", seed=k) for k, patient in enumerate(("p01", "p02"))]
    other = write_scan(tmp_path / "p03" / "t2.nii.gz")
    listing = tmp_path / "scans.txt"
    listing.write_text("\n".join(str(s) for s in [*scans, other]), encoding="utf-8")
    plan = plan_outputs(scan_list_inputs(listing), tmp_path / "out", suffix_of=lambda scan: ".nii.gz")
    assert [p.stem for p in plan] == ["p01_t2_mha", "p02_t2_mha", "t2_nii_gz"]
    assert len({p.outputs["segmentation"] for p in plan}) == 3


# --- the command -----------------------------------------------------------------------------------------------

def test_a_failed_scan_of_a_summary_is_run_again_from_it(tiny_model: Path, tmp_path: Path) -> None:
    scans = [write_scan(tmp_path / "site1" / "a.mha", seed=0), write_scan(tmp_path / "site2" / "b.mha", seed=1)]
    listing = tmp_path / "cohort.txt"
    listing.write_text(f"{scans[0]}\n{scans[1]}\n{tmp_path / 'site3' / 'c.mha'}\n", encoding="utf-8")
    out = tmp_path / "out"
    first = predict("--input-list", str(listing), "-o", str(out), "--model", str(tiny_model), "--summary", *FAST)
    assert first.returncode == 2, "a listed scan that does not exist fails the run"
    assert "c.mha: does not exist (line 3 of cohort.txt)" in first.stderr
    assert sorted(p.name for p in out.glob("*.json")) == ["a.json", "b.json"]
    assert json.loads((out / "b.json").read_text(encoding="utf-8"))["input"] == str(scans[1])
    write_scan(tmp_path / "site3" / "c.mha", seed=2)  # the missing scan turns up
    (out / "a.json").unlink()
    again = predict("--input-list", str(out / "summary.csv"), "--where", "status=failed", "-o", str(tmp_path / "re"),
                    "--model", str(tiny_model), *FAST)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "re").glob("*.json")) == ["c.json"], "only the failed row"


def test_input_and_input_list_exclude_each_other(tiny_model: Path, tmp_path: Path) -> None:
    scan = write_scan(tmp_path / "a.mha")
    listing = tmp_path / "scans.txt"
    listing.write_text(f"{scan}\n", encoding="utf-8")
    both = predict("-i", str(scan), "--input-list", str(listing), "-o", str(tmp_path / "out"), *FAST)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    where_alone = predict("-i", str(scan), "--where", "status=failed", "-o", str(tmp_path / "out"), *FAST)
    assert where_alone.returncode == 2
    assert where_alone.stderr.strip() == ("spinesegdiff: error: --where filters the rows of an --input-list CSV: "
                                          "give one")
    assert not (tmp_path / "out").exists()
