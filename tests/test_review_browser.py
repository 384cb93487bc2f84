"""The review page in a real browser: Chromium (the system's, ``apt install chromium chromium-driver``) driven by
Selenium, headless, opened from disk as a user opens it.

Checked: every picture decodes, no console errors, rows sorted most doubtful first and by any column, layer
toggles and opacity, slices, zoom, keyboard navigation, the structure under the cursor, decisions kept across a
reload, and the exported CSV read back by :func:`spinesegdiff.review.read_decisions`. Skipped, with the reason,
where Selenium, Chromium or chromedriver is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from review_helpers import SHAPE, level_report, uncertainty_field, write_cohort
from spinesegdiff.review import build_review, read_decisions

CHROMIUM = Path(os.environ.get("SPINESEGDIFF_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("SPINESEGDIFF_CHROMEDRIVER", "/usr/bin/chromedriver"))
ORDER = ["worst", "odd", "lost", "stack", "calm"]
"""The cohort of :func:`review_helpers.write_cohort`, most doubtful (highest mean uncertainty) first."""


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"{path} not found: install the system's {package} (apt-get install chromium chromium-driver)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads: Path) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # no Selenium Manager downloads: the system's Chromium and driver only
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield browser
    finally:
        browser.quit()
        if offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = offline


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("review") / "cohort"
    phantoms = write_cohort(out)
    build_review(out)
    return out, phantoms


def wait_for(driver, script: str, timeout: float = 10.0):
    """Run ``script`` (a JavaScript function body returning a value) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}")
        time.sleep(0.05)


def open_page(driver, out: Path, *, fresh: bool = True) -> None:
    driver.get((out / "review.html").resolve().as_uri())
    if fresh:
        driver.execute_script("localStorage.clear()")
        driver.refresh()
    wait_for(driver, "return window.spinesegdiffReview && window.spinesegdiffReview.ready")
    driver.get_log("browser")  # start each test with an empty console


def press(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def severe(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def selected(driver) -> str:
    return driver.execute_script("return window.spinesegdiffReview.selected()")


def row_order(driver, attribute: str = "case") -> list[str]:
    return driver.execute_script(
        f"return Array.from(document.querySelectorAll('#cases tbody tr')).map(r => r.dataset.{attribute})")


def shown_rows(driver) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#cases tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.dataset.case)")


def stack_decoded(driver) -> list[str]:
    """The layers shown, once all have loaded, as ``kind:decoded-width``."""
    wait_for(driver, "return Array.from(document.querySelectorAll('#stack img')).every(i => i.complete)")
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#stack img')).map(i => i.dataset.kind + ':' + i.naturalWidth)")


def test_every_picture_decodes_and_the_console_stays_clean(driver, cohort) -> None:
    out, _ = cohort
    open_page(driver, out)
    driver.execute_script("for (const img of document.querySelectorAll('img.thumb')) img.loading = 'eager';")
    wait_for(driver, "return Array.from(document.images).every(i => i.complete)")
    thumbnails = driver.execute_script(
        "return Array.from(document.querySelectorAll('img.thumb')).map(i => [i.naturalWidth, i.naturalHeight])")
    assert len(thumbnails) == 5 and all(width > 0 and height == 96 for width, height in thumbnails)
    width = SHAPE[2]
    for k, name in enumerate(ORDER):
        if k:
            press(driver, "j")
        assert selected(driver) == name
        expected = ["labels", "uncertainty"] if name == "lost" else ["image", "labels", "uncertainty"]
        assert stack_decoded(driver) == [f"{kind}:{width}" for kind in expected], name
        if name == "stack":
            for _ in range(2):
                press(driver, "]")
                assert stack_decoded(driver) == [f"{kind}:{width}" for kind in expected]
    assert severe(driver) == []


def test_rows_come_most_doubtful_first_and_sort_by_any_column(driver, cohort) -> None:
    from selenium.webdriver.common.by import By

    out, _ = cohort
    open_page(driver, out)
    assert row_order(driver) == ORDER
    uncertainties = [float(v) for v in row_order(driver, "uncertainty")]
    assert uncertainties == sorted(uncertainties, reverse=True) == [0.31, 0.19, 0.12, 0.07, 0.02]
    assert selected(driver) == "worst"  # the most doubtful case is shown first

    def click(key: str) -> None:
        driver.find_element(By.CSS_SELECTOR, f'#cases th[data-sort="{key}"] button').click()

    click("case")
    assert row_order(driver) == sorted(ORDER)
    click("case")
    assert row_order(driver) == sorted(ORDER, reverse=True)
    click("uncertainty")  # a first click on the uncertainty sorts it highest first
    assert row_order(driver) == ORDER
    click("uncertainty")
    assert row_order(driver) == ORDER[::-1]
    click("VB")
    areas = [float(v) for v in driver.execute_script(
        "return Array.from(document.querySelectorAll('#cases tbody td[data-key=VB]')).map(c => c.dataset.value)")]
    assert areas == sorted(areas)
    click("rank")
    assert row_order(driver) == ORDER
    driver.find_element(By.ID, "filter").send_keys("ta")
    assert shown_rows(driver) == ["stack"]
    assert severe(driver) == []


def test_layers_toggle_fade_zoom_and_step_through_slices(driver, cohort) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out, _ = cohort
    open_page(driver, out)

    def hidden(kind: str) -> bool:
        return driver.execute_script(f"return document.querySelector('#stack img.{kind}').hidden")

    assert (hidden("image"), hidden("labels"), hidden("uncertainty")) == (False, False, True)
    press(driver, "u")
    press(driver, "l")
    assert (hidden("labels"), hidden("uncertainty")) == (True, False)
    driver.find_element(By.ID, "show-labels").click()
    assert not hidden("labels")
    driver.execute_script("const s = document.getElementById('uncertainty-opacity'); s.value = 30; "
                          "s.dispatchEvent(new Event('input'));")
    assert driver.execute_script("return document.querySelector('#stack img.uncertainty').style.opacity") == "0.3"
    press(driver, "j", "j", "k")
    assert selected(driver) == "odd"
    press(driver, "j", "j")
    assert selected(driver) == "stack"
    assert driver.find_element(By.ID, "slice-label").text == "1 (2 of 3)"
    press(driver, Keys.ARROW_RIGHT)
    assert driver.find_element(By.ID, "slice-label").text == "2 (3 of 3)"
    assert driver.execute_script("return document.querySelector('#stack img.labels').src").endswith("/labels-2.png")
    press(driver, "[", "[", "[")
    assert driver.find_element(By.ID, "slice-label").text == "0 (1 of 3)"
    assert driver.find_element(By.ID, "slice-control").is_displayed()
    press(driver, "+")
    assert driver.find_element(By.ID, "zoom-level").text == "125%"
    assert "scale(1.25)" in driver.execute_script("return document.getElementById('stack').style.transform")
    press(driver, "f")
    assert driver.find_element(By.ID, "zoom-level").text == "100%"
    press(driver, "j")
    assert selected(driver) == "calm" and not driver.find_element(By.ID, "slice-control").is_displayed()
    details = driver.find_element(By.ID, "details").text
    assert "mean uncertainty: 0.0200" in details
    assert "series: 3 't2_tse_sag' (sagittal, T2; chosen by rule)" in details  # the DICOM series read
    press(driver, "k", "k", "k")
    details = driver.find_element(By.ID, "details").text
    assert selected(driver) == "odd" and "too few discs" in details and "series:" not in details
    assert "doubtful: the lowest disc is cut by the image's lower edge" in details  # the naming note
    assert "L4-L5 10.0 (9.7–14.2)" in details and "L5-S1 (partial)" in details  # a measure with its range
    entropy = level_report(5)["discs"][1]["uncertainty"]["boundary_entropy"]  # "odd" is written with seed 5
    assert f"{entropy:.3f}" in details and "NaN" not in details
    assert severe(driver) == []


def test_the_structure_under_the_cursor(driver, cohort) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    out, phantoms = cohort
    open_page(driver, out)
    driver.find_element(By.CSS_SELECTOR, '#cases tr[data-case="calm"]').click()
    wait_for(driver, "const p = window.spinesegdiffReview.probeAt(0, 0); return p !== null && typeof p === 'object'")
    rows, cols = SHAPE[1:]
    probed = driver.execute_script(
        f"const out = []; for (let r = 0; r < {rows}; r++) {{ const line = []; for (let c = 0; c < {cols}; c++) {{"
        " const p = window.spinesegdiffReview.probeAt(r, c); line.push([p.label, p.uncertainty]); } out.push(line); }"
        " return out;")
    probed = np.asarray(probed)
    truth = phantoms["calm"].labels[1]
    assert np.array_equal(probed[..., 0], truth)
    assert np.abs(probed[..., 1] - uncertainty_field(phantoms["calm"], [1])[1]).max() < 0.01
    row, col = (int(v[len(v) // 2]) for v in np.nonzero(truth == 3))  # a disc pixel
    box = driver.execute_script(
        "const s = document.getElementById('stack').getBoundingClientRect(); "
        "const g = document.getElementById('stage').getBoundingClientRect(); "
        "return [s.left, s.top, s.width, s.height, g.left + g.width / 2, g.top + g.height / 2];")
    x = box[0] + (col + 0.5) * box[2] / cols - box[4]
    y = box[1] + (row + 0.5) * box[3] / rows - box[5]
    ActionChains(driver).move_to_element_with_offset(driver.find_element(By.ID, "stage"), round(x), round(y)).perform()
    text = wait_for(driver, "const t = document.getElementById('readout').textContent; "
                            "return t.includes('uncertainty') ? t : null")
    match = re.match(r"intervertebral disc, uncertainty (\d\.\d\d) \(", text)
    assert match and abs(float(match[1]) - col / (cols - 1)) <= 0.02, text
    assert severe(driver) == []


def test_decisions_are_kept_and_the_export_reads_back(driver, cohort, downloads) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    out, _ = cohort
    open_page(driver, out)
    press(driver, "1", "j", "2", "n")
    press(driver, 'canal cut, "L5"', Keys.ENTER, "see slice 1", Keys.ESCAPE)
    press(driver, "j", "3", "n")
    press(driver, '"severe" motion', Keys.ESCAPE)
    press(driver, "j", "j", "2", "0")
    assert row_order(driver, "decision") == ["accepted", "needs_correction", "rejected", "", ""]
    assert driver.find_element(By.ID, "progress").text.startswith("3 of 5 decided: 1 accepted, 1 needs correction")
    open_page(driver, out, fresh=False)  # kept in the browser across a reload
    assert row_order(driver, "decision") == ["accepted", "needs_correction", "rejected", "", ""]
    driver.find_element(By.ID, "undecided-only").click()
    assert shown_rows(driver) == ["worst", "stack", "calm"]
    target = downloads / f"{out.name}-triage.csv"
    target.unlink(missing_ok=True)
    driver.find_element(By.ID, "export").click()
    deadline = time.monotonic() + 10
    while not target.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert target.is_file(), sorted(p.name for p in downloads.iterdir())
    assert target.read_text(encoding="utf-8") == driver.execute_script("return window.spinesegdiffReview.exportCsv()")
    decisions = read_decisions(target)
    assert [(d.case, d.decision, d.note) for d in decisions] == [
        ("worst", "accepted", ""), ("odd", "needs_correction", 'canal cut, "L5"\nsee slice 1'),
        ("lost", "rejected", '"severe" motion')]
    assert decisions[0].path == str(out / "scans" / "worst.mha")
    assert decisions[2].path == "scans/lost.mha"  # not found: as the report records it
    assert all(d.reviewed_at.endswith("Z") for d in decisions)
    assert severe(driver) == []


def test_a_triage_csv_imports_into_the_page(driver, cohort, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    out, _ = cohort
    open_page(driver, out)
    csv_file = tmp_path / "earlier.csv"
    csv_file.write_text("path,case,decision,note\n/x/calm.mha,calm,rejected,\"blurred, redo\"\n"
                        "/x/other.mha,other,accepted,\n/x/odd.mha,odd,perhaps,\n", encoding="utf-8")
    driver.find_element(By.ID, "import").send_keys(str(csv_file))
    status = wait_for(driver, "const t = document.getElementById('status').textContent; "
                              "return t.startsWith('Imported') ? t : null")
    assert status == ("Imported 1 decision; 2 rows left out (case not on this page or unknown decision).")
    assert row_order(driver, "decision") == ["", "", "", "", "rejected"]
    driver.find_element(By.CSS_SELECTOR, '#cases tr[data-case="calm"]').click()
    assert driver.find_element(By.ID, "note").get_attribute("value") == "blurred, redo"
    assert severe(driver) == []

