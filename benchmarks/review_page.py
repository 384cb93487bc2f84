"""How long the review page takes to build and to open for a large cohort (500 cases by default).

Writes a synthetic results folder (phantom scans with their label maps, uncertainty maps and reports, laid out as
``spinesegdiff predict`` writes them; a few distinct phantoms, hard-linked over the cases so the disk holds only
those, every case with its own report and mean uncertainty), builds the page with ``build_review``, then opens it
in headless Chromium (the system's, driven by Selenium) and measures: page load until the script is ready, every
thumbnail decoded after scrolling the whole table, a sort by column, and stepping through cases with the keyboard.

    python benchmarks/review_page.py [--cases 500] [--jobs 2] [--shape 9 384 320] [--out FOLDER]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from spinesegdiff.data.io import write_image
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.review import build_review

DISTINCT = 8
"""Distinct phantoms written; the cases share their image files through hard links."""


def boundary_uncertainty(labels: np.ndarray) -> np.ndarray:
    """A heatmap like the sampler's: high on the structures' borders, fading within a few pixels."""
    from scipy import ndimage

    borders = (ndimage.grey_dilation(labels, size=3) != ndimage.grey_erosion(labels, size=3)).astype(np.float32)
    heat = ndimage.gaussian_filter(borders, 2.0)
    return np.clip(0.7 * heat / max(float(heat.max()), 1e-6), 0, 1).astype(np.float32)


def write_cohort(out: Path, cases: int, shape: tuple[int, int, int]) -> None:
    """``cases`` results in ``out`` (central-slice mode), uncertainties spread over [0.01, 0.4]."""
    sources = out / "sources"
    sources.mkdir(parents=True)
    (out / "scans").mkdir()
    central = shape[0] // 2
    for k in range(DISTINCT):
        phantom = make_phantom(shape=shape, spacing=(0.9, 0.9, 3.5), seed=k)
        labels = np.zeros_like(phantom.labels)
        labels[central] = phantom.labels[central]
        heat = np.zeros(phantom.labels.shape, dtype=np.float32)
        heat[central] = boundary_uncertainty(labels[central])
        write_image(sources / f"{k}_scan.mha", (phantom.image * 1000).astype(np.int16), phantom.geometry)
        write_image(sources / f"{k}_seg.mha", labels, phantom.geometry)
        write_image(sources / f"{k}_uncertainty.mha", heat, phantom.geometry)
    rng = np.random.default_rng(0)
    for case in range(cases):
        stem, source = f"case{case:04d}", case % DISTINCT
        os.link(sources / f"{source}_scan.mha", out / "scans" / f"{stem}.mha")
        os.link(sources / f"{source}_seg.mha", out / f"{stem}_seg.mha")
        os.link(sources / f"{source}_uncertainty.mha", out / f"{stem}_uncertainty.mha")
        structures = {a: {"name": n, "area_mm2": float(rng.uniform(800, 3000)), "uncertainty_mean": 0.05,
                          "uncertainty_max": 0.7}
                      for a, n in (("SC", "spinal canal"), ("VB", "vertebra"), ("IVD", "intervertebral disc"))}
        structures["overall_uncertainty_mean"] = round(float(rng.uniform(0.01, 0.4)), 4)
        report = {"input": f"scans/{stem}.mha", "mode": "central slice", "sagittal_slices": [central],
                  "outputs": {"segmentation": f"{stem}_seg.mha", "uncertainty": f"{stem}_uncertainty.mha",
                              "overlay": f"{stem}_overlay.png", "report": f"{stem}.json"},
                  "structures": structures, "quality": {"verdict": "ok", "reasons": [], "measures": {}}}
        (out / f"{stem}.json").write_text(json.dumps(report), encoding="utf-8")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def browse(page: Path) -> dict[str, float]:
    """Seconds to open the page, decode every thumbnail, sort, and step through 50 cases (headless Chromium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    figures: dict[str, float] = {}
    try:
        started = time.perf_counter()
        driver.get(page.resolve().as_uri())  # returns after the load event
        while not driver.execute_script("return window.spinesegdiffReview && window.spinesegdiffReview.ready"):
            time.sleep(0.01)
        figures["open_s"] = time.perf_counter() - started
        figures["dom_ready_ms"] = driver.execute_script(
            "const t = performance.getEntriesByType('navigation')[0]; return t.domContentLoadedEventEnd;")
        started = time.perf_counter()
        driver.execute_script("const s = document.querySelector('.table-scroll'); s.scrollTop = s.scrollHeight;")
        driver.execute_script("for (const img of document.querySelectorAll('img.thumb')) img.loading = 'eager';")
        while not driver.execute_script("return Array.from(document.images).every(i => i.complete)"):
            time.sleep(0.02)
        figures["all_thumbnails_s"] = time.perf_counter() - started
        started = time.perf_counter()
        driver.find_element(By.CSS_SELECTOR, '#cases th[data-sort="case"] button').click()
        driver.execute_script("return 1")
        figures["sort_by_click_s"] = time.perf_counter() - started
        figures["sort_in_page_ms"] = driver.execute_script(
            "const t = performance.now(); window.spinesegdiffReview.sortBy('uncertainty', true); "
            "void document.body.offsetHeight; return performance.now() - t;")
        driver.find_element(By.CSS_SELECTOR, '#cases th[data-sort="rank"] button').click()
        started = time.perf_counter()
        for _ in range(50):
            ActionChains(driver).send_keys("j").perform()
        while not driver.execute_script(
                "return Array.from(document.querySelectorAll('#stack img')).every(i => i.complete)"):
            time.sleep(0.01)
        figures["50_cases_by_keyboard_s"] = time.perf_counter() - started
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        figures["console_errors"] = len(severe)
    finally:
        driver.quit()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(9, 384, 320), metavar=("SLICES", "ROWS", "COLS"))
    parser.add_argument("--out", type=Path, help="results folder to write (default: a temporary one, removed)")
    parser.add_argument("--no-browser", action="store_true", help="build only")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="review-benchmark-")) / "results"
    try:
        started = time.perf_counter()
        write_cohort(out, args.cases, tuple(args.shape))
        print(f"wrote {args.cases} synthetic results ({' x '.join(map(str, args.shape))} voxels) in "
              f"{time.perf_counter() - started:.1f} s")
        page = build_review(out, workers=args.jobs)
        layers = folder_bytes(out / "review")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; jobs {args.jobs}")
        print("| measure | value |")
        print("|---|---|")
        print(f"| build (read maps, draw layers, write page) | {page.seconds:.1f} s "
              f"({1000 * page.seconds / args.cases:.0f} ms per case) |")
        print(f"| page | {page.path.stat().st_size / 1e6:.2f} MB |")
        print(f"| layers | {layers / 1e6:.1f} MB ({layers / args.cases / 1e3:.0f} kB per case) |")
        if not args.no_browser:
            for name, value in browse(page.path).items():
                print(f"| {name.replace('_', ' ')} | {value:.2f} |" if isinstance(value, float) else
                      f"| {name.replace('_', ' ')} | {value} |")
    finally:
        if args.out is None:
            shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
