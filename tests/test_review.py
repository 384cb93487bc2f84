"""The review page without a browser: reading a results folder, the triage order, the picture layers, the page
(links, escaping, atomic replacement), the triage CSV read back, the colours, and ``spinesegdiff review``.

The page in a real browser: tests/test_review_browser.py.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import html.parser
import io
import json
import re
import subprocess
import zlib
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from review_helpers import SHAPE, uncertainty_field, write_cohort, write_result
from spinesegdiff.data.io import write_image
from spinesegdiff.data.preprocess import native_slice, plan_grid
from spinesegdiff.errors import InputError, MissingInputError
from spinesegdiff.review import DECISIONS, build_review, read_decisions
from spinesegdiff.review.cases import BY_SCORE, BY_UNCERTAINTY, most_doubtful_first, read_cases
from spinesegdiff.review.layers import PROBE_LEVELS, grey, intensity_window, probe_bytes
from spinesegdiff.review.palette import STRUCTURE_COLOURS, UNCERTAINTY_OPAQUE_AT, hex_to_rgb, uncertainty_lut


class _PageParser(html.parser.HTMLParser):
    """The table rows' attributes, every ``src``, and the embedded JSON of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []
        self.sources: list[str] = []
        self.data_text = ""
        self._in_data = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "tr" and "data-case" in values:
            self.rows.append(values)
        if "src" in values:
            self.sources.append(values["src"])
        self._in_data = tag == "script" and values.get("id") == "review-data"

    def handle_endtag(self, tag: str) -> None:
        self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._in_data:
            self.data_text += data


def parse_page(path: Path) -> _PageParser:
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def page_data(path: Path) -> dict:
    return json.loads(parse_page(path).data_text)


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


# ---- reading a results folder ----

def test_read_cases_reads_reports_finds_scans_and_flags_what_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_cohort(out)
    (out / "notes.json").write_text('{"what": "not a report"}')
    (out / "broken.json").write_text("{")
    collection = read_cases(out)
    by_name = {c.case: c for c in collection.cases}
    assert sorted(by_name) == ["calm", "lost", "odd", "stack", "worst"]
    assert by_name["calm"].image == out / "scans" / "calm.mha"  # recorded relative to OUT
    assert by_name["lost"].image is None and by_name["lost"].flags == ("image not found",)
    assert by_name["lost"].export_path == "scans/lost.mha"  # as recorded when not found
    assert by_name["stack"].mode == "volume" and by_name["stack"].slices == (0, 1, 2)
    assert by_name["stack"].structures["VB"]["volume_mm3"] > 0 and by_name["stack"].structures["VB"]["area_mm2"] is None
    assert by_name["odd"].verdict == "doubtful" and by_name["odd"].reasons == ("too few discs",)
    odd = by_name["odd"]
    assert [d["level"] for d in odd.discs] == ["L3-L4", "L4-L5", "L5-S1"] and odd.vertebrae[0]["level"] == "L4"
    disc = odd.discs[1]  # the uncertainty of each measure survives: edge entropy and [low, high] ranges
    assert disc["height_mm"] == 10.0 and disc["uncertainty"]["height_mm"] == [9.72, 14.17]
    assert 0 < disc["uncertainty"]["boundary_entropy"] < 1 and odd.discs[0]["uncertainty"]["height_mm"] is None
    assert odd.levels["doubtful"] is True and "lower edge" in odd.levels["reason"]
    assert by_name["worst"].uncertainty_mean == pytest.approx(0.31)
    assert sorted(collection.notes) == [f"{out / 'broken.json'}: skipped: not a readable JSON report (JSONDecodeError)",
                                        f"{out / 'notes.json'}: skipped: not a spinesegdiff report (no outputs and "
                                        "structures)"]


def test_a_scan_recorded_by_absolute_path_or_from_the_working_directory_is_found(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    out = tmp_path / "out"
    write_result(out, "far", image="absolute")
    case = read_cases(out).cases[0]
    assert case.image == out / "scans" / "far.mha" and case.flags == ()
    report = json.loads((out / "far.json").read_text(encoding="utf-8"))
    report["input"] = "out/scans/far.mha"  # relative to where predict ran
    (out / "far.json").write_text(json.dumps(report))
    monkeypatch.chdir(tmp_path)
    assert read_cases(out).cases[0].image == out / "scans" / "far.mha"
    (tmp_path / "link.mha").symlink_to(out / "scans" / "far.mha")
    report["input"] = "link.mha"
    (out / "far.json").write_text(json.dumps(report))
    assert read_cases(out).cases[0].export_path == str(tmp_path / "link.mha")  # the path the user gave, link kept


def test_outputs_missing_or_outside_the_folder_are_flagged(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_result(out, "a")
    (out / "a_uncertainty.mha").unlink()
    write_result(out, "b")
    report = json.loads((out / "b.json").read_text(encoding="utf-8"))
    report["outputs"]["segmentation"] = "../elsewhere/b_seg.mha"
    (out / "b.json").write_text(json.dumps(report))
    by_name = {c.case: c for c in read_cases(out).cases}
    assert by_name["a"].uncertainty is None and "uncertainty map a_uncertainty.mha missing" in by_name["a"].flags
    assert by_name["b"].segmentation is None
    assert "segmentation '../elsewhere/b_seg.mha' is not a file of this case" in by_name["b"].flags


def test_failed_scans_of_a_cohort_summary_become_cases(tmp_path: Path) -> None:
    from spinesegdiff.pipelines.summary import summary_row, write_summary

    out = tmp_path / "out"
    write_result(out, "good")
    rows = [summary_row(Path("scans/good.mha"), "written", report=out / "good.json"),
            summary_row(Path("/data/bad.nii.gz"), "failed", problem="/data/bad.nii.gz: file is truncated")]
    write_summary(out / "summary-1-of-2.csv", rows)
    cases = {c.case: c for c in read_cases(out).cases}
    assert sorted(cases) == ["bad", "good"]
    assert cases["bad"].failed and cases["bad"].flags == ("failed: /data/bad.nii.gz: file is truncated",)
    assert cases["bad"].export_path == "/data/bad.nii.gz"


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: root / "nowhere", r"nowhere: no such results folder$"),
    (lambda root: root, r": holds no spinesegdiff results \(<stem>\.json reports of predict\)$"),
    (lambda root: (root / "file.txt", (root / "file.txt").write_text("x"))[0], r"file\.txt: is not a folder"),
])
def test_no_results_is_one_line(tmp_path: Path, make, message: str) -> None:
    folder = make(tmp_path)
    with pytest.raises((InputError, MissingInputError), match=message):
        read_cases(folder)


# ---- the triage order ----

def _orders(tmp_path: Path, entries: list[tuple[str, float | None, float | None]]) -> tuple[list[str], str]:
    out = tmp_path / "out"
    for k, (stem, uncertainty, score) in enumerate(entries):
        write_result(out, stem, seed=k, uncertainty_mean=uncertainty, score=score)
    ordered, measure = most_doubtful_first(read_cases(out).cases)
    return [c.case for c in ordered], measure


def test_most_doubtful_first_by_mean_uncertainty_highest_first(tmp_path: Path) -> None:
    names, measure = _orders(tmp_path, [("a", 0.1, None), ("b", 0.3, None), ("c", None, None), ("d", 0.2, None)])
    assert (names, measure) == (["c", "b", "d", "a"], BY_UNCERTAINTY)  # no measure: needs a look, first


def test_most_doubtful_first_by_quality_score_lowest_first_when_every_case_has_one(tmp_path: Path) -> None:
    names, measure = _orders(tmp_path, [("a", 0.1, 0.9), ("b", 0.3, 0.5), ("c", 0.2, 0.2)])
    assert (names, measure) == (["c", "b", "a"], BY_SCORE)


def test_a_case_without_a_score_sorts_the_cohort_by_uncertainty(tmp_path: Path) -> None:
    names, measure = _orders(tmp_path, [("a", 0.1, 0.9), ("b", 0.3, None), ("c", 0.2, 0.2)])
    assert (names, measure) == (["b", "c", "a"], BY_UNCERTAINTY)


# ---- the picture layers ----

def _built(tmp_path: Path, **kwargs) -> tuple[Path, dict, object]:
    out = tmp_path / "out"
    phantom = write_result(out, "case", **kwargs)
    page = build_review(out)
    return out, page_data(page.path)["cases"][0], phantom


def test_layers_show_the_labels_uncertainty_and_scan_of_the_segmented_slice(tmp_path: Path) -> None:
    out, case, phantom = _built(tmp_path)
    layers = case["layers"]
    central = SHAPE[0] // 2
    assert layers["slices"] == [central] and layers["initial"] == central and layers["image"] is True
    assert (layers["rows"], layers["cols"]) == SHAPE[1:]
    assert layers["heightMm"] == pytest.approx(SHAPE[1] * 1.25) and layers["widthMm"] == pytest.approx(SHAPE[2] * 1.5)
    folder = out / unquote(layers["dir"])
    truth = phantom.labels[central]  # a PIR phantom's slice k is the view of sagittal slice k
    grid = plan_grid(phantom.labels.shape, phantom.geometry)
    assert np.array_equal(native_slice(phantom.labels, grid, central), truth)
    labels = png(folder / f"labels-{central}.png")
    assert labels.shape == (*SHAPE[1:], 4)
    for value, abbreviation in enumerate(("SC", "VB", "IVD"), start=1):
        assert (truth == value).any()
        assert np.all(labels[truth == value] == (*hex_to_rgb(STRUCTURE_COLOURS[abbreviation]), 255))
    assert np.all(labels[truth == 0][:, 3] == 0)
    heat = png(folder / f"uncertainty-{central}.png")
    field = uncertainty_field(phantom, [central])[central]
    assert np.array_equal(heat[..., :3], uncertainty_lut()[np.round(field * 255).astype(int)])
    expected_alpha = np.round(np.clip(field / UNCERTAINTY_OPAQUE_AT, 0, 1) * 255)
    assert np.array_equal(heat[..., 3], expected_alpha) and heat[:, 0, 3].max() == 0 and heat[:, -1, 3].min() == 255
    scan = (phantom.image * 1000).astype(np.int16)
    assert np.array_equal(png(folder / f"image-{central}.png"), grey(scan[central], intensity_window(scan)))
    assert png(folder / "thumbnail.png").shape[0] == 96


def test_the_probe_holds_each_pixels_structure_and_uncertainty(tmp_path: Path) -> None:
    out, case, phantom = _built(tmp_path)
    central = case["layers"]["initial"]
    script = (out / unquote(case["layers"]["dir"]) / f"probe-{central}.js").read_text(encoding="utf-8")
    match = re.fullmatch(r'spinesegdiffProbe\("case", (\d+), (\d+), (\d+), "([A-Za-z0-9+/=]+)"\);\n', script)
    assert match and tuple(int(v) for v in match.groups()[:3]) == (central, *SHAPE[1:])
    values = np.frombuffer(zlib.decompress(base64.b64decode(match[4])), dtype=np.uint8).reshape(SHAPE[1:])
    assert np.array_equal(values >> 6, phantom.labels[central])
    field = uncertainty_field(phantom, [central])[central]
    assert np.abs((values & 63) / PROBE_LEVELS - field).max() <= 0.5 / PROBE_LEVELS + 1e-6


def test_probe_bytes_pack_label_and_uncertainty() -> None:
    packed = np.frombuffer(probe_bytes(np.array([[0, 1], [2, 3]]), np.array([[0.0, 1.0], [0.5, 0.02]])), np.uint8)
    assert packed.tolist() == [0, 64 | 63, 128 | 32, 192 | 1]


def test_a_volume_result_gets_layers_for_every_segmented_slice(tmp_path: Path) -> None:
    out, case, _ = _built(tmp_path, volume=True)
    assert case["layers"]["slices"] == [0, 1, 2] and case["layers"]["initial"] == 1
    folder = out / unquote(case["layers"]["dir"])
    for k in range(3):
        assert all((folder / f"{kind}-{k}.png").is_file() for kind in ("image", "labels", "uncertainty"))
        assert (folder / f"probe-{k}.js").is_file()


def test_without_the_scan_the_layers_lie_on_black(tmp_path: Path) -> None:
    out, case, _ = _built(tmp_path, image="missing")
    folder = out / unquote(case["layers"]["dir"])
    assert case["layers"]["image"] is False and case["flags"] == ["image not found"]
    assert not list(folder.glob("image-*.png")) and (folder / "labels-1.png").is_file()


def test_a_scan_on_another_grid_is_left_out_with_a_flag(tmp_path: Path) -> None:
    out = tmp_path / "out"
    phantom = write_result(out, "case")
    write_image(out / "scans" / "case.mha", np.zeros((3, 32, 48), np.int16), phantom.geometry)
    case = page_data(build_review(out).path)["cases"][0]
    assert case["layers"]["image"] is False
    assert case["flags"] == ["image grid (3, 32, 48) is not the segmentation's (3, 64, 48)"]


def test_slicer_segmentation_results_are_drawn(tmp_path: Path) -> None:
    out, case, phantom = _built(tmp_path, suffix=".seg.nrrd")
    central = case["layers"]["initial"]
    labels = png(out / unquote(case["layers"]["dir"]) / f"labels-{central}.png")
    assert np.array_equal(labels[..., 3] > 0, phantom.labels[central] > 0)


def test_an_unreadable_label_map_is_a_flag_not_a_failed_page(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_result(out, "good", uncertainty_mean=0.1)
    write_result(out, "bad", uncertainty_mean=0.2)
    (out / "bad_seg.mha").write_bytes(b"not an image")
    cases = {c["id"]: c for c in page_data(build_review(out).path)["cases"]}
    assert cases["bad"]["layers"] is None and cases["bad"]["flags"][0].startswith("not drawn: ")
    assert cases["good"]["layers"] is not None


def test_dicom_seg_labels_are_placed_on_the_uncertainty_grid(tmp_path: Path) -> None:
    dicom_helpers = pytest.importorskip("dicom_helpers")
    dicom_seg = pytest.importorskip("spinesegdiff.data.dicom_seg")
    from spinesegdiff.data.io import read_image
    from spinesegdiff.data.phantom import make_phantom
    from spinesegdiff.review.volumes import read_dicom_seg_labels

    phantom = make_phantom(shape=SHAPE, spacing=(1.5, 1.25, 3.0), seed=3, num_vertebrae=4)
    dicom_helpers.write_mr_series(tmp_path / "series", (phantom.image * 1000).astype(np.int16), phantom.geometry)
    _, geometry = read_image(tmp_path / "series")
    labels = np.zeros_like(phantom.labels)
    labels[:2] = phantom.labels[:2]  # the last slice without labels
    labels[labels == 1] = 0  # an empty segment (no canal)
    dicom_seg.write_dicom_segmentation(tmp_path / "case_seg.dcm", labels, tmp_path / "series")
    assert np.array_equal(read_dicom_seg_labels(tmp_path / "case_seg.dcm", labels.shape, geometry), labels)
    with pytest.raises(InputError, match=r"scan\.mha: cannot read the DICOM Segmentation"):
        write_image(tmp_path / "scan.mha", labels, geometry)
        read_dicom_seg_labels(tmp_path / "scan.mha", labels.shape, geometry)


# ---- the page ----

def test_the_page_lists_every_case_most_doubtful_first_with_its_data(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_cohort(out)
    page = build_review(out)
    assert page.path == out / "review.html" and page.drawn == 5 and page.measure == BY_UNCERTAINTY
    parsed = parse_page(page.path)
    assert [r["data-case"] for r in parsed.rows] == ["worst", "odd", "lost", "stack", "calm"]
    assert [float(r["data-uncertainty"]) for r in parsed.rows] == [0.31, 0.19, 0.12, 0.07, 0.02]
    data = json.loads(parsed.data_text)
    assert [c["id"] for c in data["cases"]] == ["worst", "odd", "lost", "stack", "calm"]
    assert data["storageKey"] == str(out.resolve()) and data["columns"][:4] == ["path", "case", "decision", "note"]
    assert data["cases"][0]["path"] == str(out / "scans" / "worst.mha")
    text = page.path.read_text(encoding="utf-8")
    assert "Okabe-Ito" in text and "cividis" in text and "van der Graaf" in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "the page must not load anything remote"


def test_every_link_of_the_page_is_a_file_beside_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_cohort(out)
    page = build_review(out)
    parsed = parse_page(page.path)
    assert len(parsed.sources) == 5 and all((out / unquote(s)).is_file() for s in parsed.sources)
    for case in json.loads(parsed.data_text)["cases"]:
        folder = out / unquote(case["layers"]["dir"])
        kinds = ("labels", "uncertainty", "probe") + (("image",) if case["layers"]["image"] else ())
        for k in case["layers"]["slices"]:
            for kind in kinds:
                assert (folder / f"{kind}-{k}.{'js' if kind == 'probe' else 'png'}").is_file()


def test_names_that_html_and_urls_treat_specially_survive(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stem = 'a&b <i>"x"#1 %20'
    write_result(out, stem)
    page = build_review(out)
    parsed = parse_page(page.path)
    assert parsed.rows[0]["data-case"] == stem
    case = json.loads(parsed.data_text)["cases"][0]
    assert case["id"] == stem and (out / unquote(case["layers"]["dir"]) / "labels-1.png").is_file()
    assert "<i>" not in page.path.read_text(encoding="utf-8").split("<tbody>")[1].split("</tbody>")[0]


def test_a_rebuild_replaces_the_layers_and_a_failed_one_leaves_the_page(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    write_cohort(out)
    first = build_review(out)
    builds = list((out / "review").iterdir())
    assert len(builds) == 1
    second = build_review(out)
    assert [p.name for p in (out / "review").iterdir()] != [b.name for b in builds]
    assert len(list((out / "review").iterdir())) == 1
    before = second.path.read_bytes()
    import spinesegdiff.review.build as build_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(build_module, "render_page", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_review(out)
    assert second.path.read_bytes() == before and first.path == second.path
    kept = list((out / "review").iterdir())
    assert len(kept) == 1 and (kept[0] / "worst" / "labels-1.png").is_file()


def test_a_page_that_is_not_ours_is_never_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_result(out, "a")
    (out / "review.html").write_text("<html>my notes</html>")
    with pytest.raises(InputError, match=r"review\.html: is not a spinesegdiff review page and would be replaced"):
        build_review(out)
    assert (out / "review.html").read_text("utf-8") == "<html>my notes</html>" and not (out / "review").exists()
    (out / "review.html").unlink()
    (out / "review").write_text("in the way")
    with pytest.raises(InputError, match=r"review: is in the way of the review page's layers"):
        build_review(out)


def test_a_page_that_cannot_be_written_is_one_line_and_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    import spinesegdiff.review.build as build_module

    out = tmp_path / "out"
    write_result(out, "a")
    page = build_review(out)
    before, layers = page.path.read_bytes(), sorted((out / "review").iterdir())

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build_module, "atomic_write_text", full_disk)
    with pytest.raises(InputError, match=r"review\.html: cannot write the review page \(No space left on device\)$"):
        build_review(out)
    assert page.path.read_bytes() == before and sorted((out / "review").iterdir()) == layers

    def read_only(root):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(build_module, "_new_build", read_only)
    with pytest.raises(InputError, match=r"review: cannot write the review page's layers \(Permission denied\)$"):
        build_review(out)


# ---- the triage CSV ----

def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "triage.csv"
    path.write_bytes(text.encode("utf-8"))
    return path


def test_read_decisions_reads_what_the_page_exports(tmp_path: Path) -> None:
    text = ('path,case,decision,note,reviewed_at\n'
            '/data/a.mha,a,accepted,,2024-05-01T10:00:00.000Z\n'
            '/data/b c.mha,b,needs_correction,"canal cut, ""L5""\nsee slice 4",2024-05-01T10:01:00.000Z\n'
            'scans/c.nii.gz,c,rejected,motion,\n')
    decisions = read_decisions(_csv(tmp_path, "\ufeff" + text))
    assert [(d.path, d.case, d.decision) for d in decisions] == [
        ("/data/a.mha", "a", "accepted"), ("/data/b c.mha", "b", "needs_correction"),
        ("scans/c.nii.gz", "c", "rejected")]
    assert decisions[1].note == 'canal cut, "L5"\nsee slice 4' and decisions[1].line == 3
    assert decisions[2].line == 5 and decisions[0].reviewed_at == "2024-05-01T10:00:00.000Z"
    assert DECISIONS == ("accepted", "needs_correction", "rejected")


def test_read_decisions_ignores_extra_columns_and_blank_lines(tmp_path: Path) -> None:
    decisions = read_decisions(_csv(tmp_path, "reviewer,Case,PATH,decision,note\nme,a,/a.mha,accepted,ok\n\n"))
    assert [(d.case, d.path, d.note, d.reviewed_at) for d in decisions] == [("a", "/a.mha", "ok", "")]


def test_the_input_list_of_predict_reads_the_triage_csv(tmp_path: Path) -> None:
    input_list = pytest.importorskip("spinesegdiff.pipelines.input_list")
    (tmp_path / "a.mha").write_text("x")
    path = _csv(tmp_path, "path,case,decision,note,reviewed_at\na.mha,a,needs_correction,redo,\n"
                          "/b.mha,b,accepted,,\n")
    listed = input_list.read_input_list(path, where={"decision": "needs_correction"})
    assert [entry.path for entry in listed] == [tmp_path / "a.mha"]


@pytest.mark.parametrize(("text", "message"), [
    ("", r"triage\.csv: is empty: a triage CSV starts with the header path,case,decision,note,reviewed_at$"),
    ("path,case,note\n", r"triage\.csv: header lacks the column decision \(a triage CSV has "),
    ("case,note\n", r"header lacks the columns path, decision "),
    ("path,case,decision,note,case\n", r"header names the column case twice$"),
    ("path,case,decision,note\n/a,a,maybe,\n", r"line 2: decision 'maybe' is not one of accepted, "
                                               r"needs_correction, rejected$"),
    ("path,case,decision,note\n/a,a,,\n", r"line 2: decision '' is not one of "),
    ("path,case,decision,note\n/a,,accepted,\n", r"line 2: the case is empty$"),
    ("path,case,decision,note\n,a,accepted,\n", r"line 2: the path of case 'a' is empty$"),
    ("path,case,decision,note\n/a,a,accepted\n", r"line 2: 3 fields, the header needs 4$"),
    ("path,case,decision,note\n/a,a,accepted,\n/a,a,rejected,\n", r"line 3: case 'a' is decided twice \(line 2"),
    ('path,case,decision,note\n/a,a,accepted,"open\n', r"not valid CSV"),
])
def test_a_bad_triage_csv_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_decisions(_csv(tmp_path, text))


def test_a_missing_or_binary_triage_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"nope\.csv: no such triage file$"):
        read_decisions(tmp_path / "nope.csv")
    (tmp_path / "binary.csv").write_bytes(b"path,case\n\xff\xfe")
    with pytest.raises(InputError, match=r"binary\.csv: is not UTF-8 text \(byte 10\)"):
        read_decisions(tmp_path / "binary.csv")
    with pytest.raises(InputError, match=r": is a folder, not a triage CSV$"):
        read_decisions(tmp_path)


# ---- the colours ----

_MACHADO = {  # Machado, Oliveira and Fernandes 2009, severity 1, on linear RGB
    "protanopia": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deuteranopia": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                     [-0.011820, 0.042940, 0.968881]],
    "tritanopia": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}


def _lab(rgb: np.ndarray) -> np.ndarray:
    """Linear sRGB (..., 3) -> CIELAB (D65)."""
    xyz = rgb @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def _linear(colours: list[str]) -> np.ndarray:
    srgb = np.array([hex_to_rgb(c) for c in colours], dtype=np.float64) / 255
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


@pytest.mark.parametrize("vision", ["normal", *_MACHADO])
def test_the_structure_colours_stay_apart_with_colour_blindness(vision: str) -> None:
    linear = _linear(list(STRUCTURE_COLOURS.values()))
    if vision != "normal":
        linear = np.clip(linear @ np.array(_MACHADO[vision]).T, 0, 1)
    lab = _lab(linear)
    distances = [np.linalg.norm(lab[i] - lab[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(distances) > 20, (vision, distances)  # Delta E 1976; about 2 is just noticeable


def test_a_red_green_pair_would_fail_the_colour_check() -> None:
    lab = _lab(np.clip(_linear(["#d62728", "#2ca02c"]) @ np.array(_MACHADO["deuteranopia"]).T, 0, 1))
    assert np.linalg.norm(lab[0] - lab[1]) < 20


# ---- the command ----

def run_cli(*args: str) -> subprocess.CompletedProcess:
    from spinesegdiff.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(list(args))
        except SystemExit as exit_:
            code = exit_.code
    return subprocess.CompletedProcess(["spinesegdiff", *args], code, stdout.getvalue(), stderr.getvalue())


def test_review_command_prints_the_page_and_the_most_doubtful_cases(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    write_cohort(out)
    (out / "notes.json").write_text("[]")
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    result = run_cli("review", str(out), "--open")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"review page: {out / 'review.html'} (5 cases, 5 with pictures, most doubtful first "
                               "by mean uncertainty; ")
    assert lines[1] == ("most doubtful: worst (uncertainty 0.3100), odd (uncertainty 0.1900), lost (uncertainty "
                        "0.1200), stack (uncertainty 0.0700), calm (uncertainty 0.0200)")
    assert result.stderr == f"spinesegdiff: note: {out / 'notes.json'}: skipped: not a spinesegdiff report (no " \
                            "outputs and structures)\n"
    assert opened == [(out / "review.html").resolve().as_uri()]


def test_review_command_refuses_no_workers(tmp_path: Path) -> None:
    write_result(tmp_path / "out", "a")
    result = run_cli("review", str(tmp_path / "out"), "--jobs", "0")
    assert (result.returncode, result.stderr) == (2, "spinesegdiff: error: --jobs must be at least 1, got 0\n")


@pytest.mark.parametrize("name", ["missing", "empty"])
def test_review_command_refuses_a_folder_without_results_in_one_line(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    if name == "empty":
        folder.mkdir()
    result = run_cli("review", str(folder))
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"spinesegdiff: error: {folder}: ")
    assert "Traceback" not in result.stderr and not (folder / "review.html").exists()


def test_review_of_a_real_predict_run(tmp_path: Path, monkeypatch) -> None:
    """predict (tiny untrained model, phantom scans, --summary) then review: the page shows what predict wrote."""
    from predict_helpers import FAST, predict, switch_off_spine_judgement, tiny_checkpoint, write_scan

    switch_off_spine_judgement(monkeypatch)
    scans = tmp_path / "scans"
    scans.mkdir()
    for seed in range(2):
        write_scan(scans / f"p{seed}.mha", seed=seed)
    (scans / "broken.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n")
    model = tiny_checkpoint(tmp_path / "tiny.pt")
    result = predict("-i", str(scans), "-o", str(tmp_path / "out"), "--model", str(model), "--summary", *FAST,
                     "--quiet")
    assert result.returncode == 2  # the broken scan failed, the others were written
    page = build_review(tmp_path / "out")
    by_name = {c.case: c for c in page.cases}
    assert sorted(by_name) == ["broken", "p0", "p1"] and page.cases[0].case == "broken" and page.drawn == 2
    with open(tmp_path / "out" / "summary.csv", encoding="utf-8") as handle:
        summary = {Path(row["input"]).stem: row for row in csv.DictReader(handle)}
    for stem in ("p0", "p1"):
        assert by_name[stem].uncertainty_mean == pytest.approx(float(summary[stem]["uncertainty_mean"]))
        assert by_name[stem].image == scans / f"{stem}.mha"
    data = page_data(page.path)
    drawn = next(c for c in data["cases"] if c["id"] == "p0")
    folder = tmp_path / "out" / unquote(drawn["layers"]["dir"])
    assert (folder / f"image-{drawn['layers']['initial']}.png").is_file()


def test_review_of_a_dicom_seg_run_draws_what_the_nifti_run_draws(tmp_path: Path, monkeypatch) -> None:
    """predict --format dicom-seg and --format nii.gz of one DICOM series (same seed): the same label layers."""
    dicom_helpers = pytest.importorskip("dicom_helpers")
    from predict_helpers import FAST, predict, switch_off_spine_judgement, tiny_checkpoint
    from predict_helpers import SHAPE as SCAN_SHAPE
    from spinesegdiff.data.phantom import make_phantom

    switch_off_spine_judgement(monkeypatch)
    phantom = make_phantom(seed=0, **SCAN_SHAPE)
    series = dicom_helpers.write_mr_series(tmp_path / "mr", (phantom.image * 800).astype(np.int16),
                                           phantom.geometry)
    model = tiny_checkpoint(tmp_path / "tiny.pt")
    layers = {}
    for name in ("nii.gz", "dicom-seg"):
        result = predict("-i", str(series.folder), "-o", str(tmp_path / name), "--model", str(model), "--preseg",
                         "none", "--format", name, "--seed", "4", *FAST)
        assert result.returncode == 0, result.stderr
        case = page_data(build_review(tmp_path / name).path)["cases"][0]
        assert case["flags"] == [] and case["layers"]["image"] is True
        folder = tmp_path / name / unquote(case["layers"]["dir"])
        layers[name] = png(folder / f"labels-{case['layers']['initial']}.png")
    assert layers["nii.gz"][..., 3].any()
    assert np.array_equal(layers["dicom-seg"], layers["nii.gz"])
