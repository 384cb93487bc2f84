"""int8 post-training quantisation (NNCF) of the shipped refiner's denoiser, measured against float32 (issue 17).

The refiner's denoiser (the graph that costs two passes of 15 samples per slice) is quantised with
``nncf.quantize`` on calibration inputs recorded from the default pipeline on the first ``--calibration``
SPIDER patients; the other patients are segmented with both graphs (same U-Net, encoder, noise and sampler).
Printed: label agreement (Dice between the float32 and int8 label maps), Dice of each against the reference
masks, and seconds per denoiser pass and per slice, the two alternating. The shipped models were trained on
all 33 patients: these Dice figures are agreement on training patients, not a held-out evaluation, so they
cannot decide whether int8 ships (that needs the fold-0 refiner's held-out fold).

    pip install nncf
    python benchmarks/speed_int8.py --data ../shared/data/spider-t2space [--calibration 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from spinesegdiff.assets import default_refiner_path
from spinesegdiff.data.io import read_image
from spinesegdiff.data.labels import to_classes
from spinesegdiff.data.preprocess import prepare_scan
from spinesegdiff.data.spider import find_cases
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.pipelines.backends.compiled import compiled_bundle
from spinesegdiff.pipelines.backends.compiled_segmenter import CompiledSegmenter
from spinesegdiff.pipelines.presegmenters import CompiledPresegmenter


def _slices(cases) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(case, (1, 320, 320) uint8 image, (320, 320) reference classes)`` of each case's central slice."""
    out = []
    for case in cases:
        volume, geometry = read_image(case.image_path)
        classes = to_classes(read_image(case.mask_path)[0])
        prepared = prepare_scan(volume, geometry, classes_zyx=classes)
        out.append((case.case_id, prepared.images, prepared.labels[0]))
    return out


def _recorder(segmenter: CompiledSegmenter, store: list[list[np.ndarray]]) -> None:
    """Record every denoiser input of ``segmenter`` into ``store`` (calibration data)."""
    run = segmenter.graphs.run

    def recording(name: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if name == "denoiser":
            store.append([np.array(a, copy=True) for a in arrays])
        return run(name, arrays)

    segmenter.graphs.run = recording  # type: ignore[method-assign]


def quantised_bundle(folder: Path, manifest: dict, calibration: list[list[np.ndarray]], target: Path) -> Path:
    """A copy of the bundle whose denoiser is int8 (NNCF post-training quantisation on ``calibration``)."""
    import nncf
    import openvino

    shutil.copytree(folder, target)
    model = openvino.Core().read_model(folder / "denoiser.xml")
    quantised = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                              fast_bias_correction=True)
    openvino.save_model(quantised, target / "denoiser.xml", compress_to_fp16=False)
    return target


def _pass_seconds(segmenter: CompiledSegmenter, inputs: list[np.ndarray]) -> float:
    segmenter.graphs.run("denoiser", inputs)
    started = time.perf_counter()
    segmenter.graphs.run("denoiser", inputs)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="SPIDER folder (images/, masks/)")
    parser.add_argument("--calibration", type=int, default=8, help="patients whose inputs calibrate int8")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = sorted(find_cases(args.data), key=lambda c: c.case_id)
    folder, manifest = compiled_bundle(default_refiner_path(), variant_check=lambda c: c.variant != "unet")
    presegmenter = CompiledPresegmenter.from_checkpoint()
    fp32 = CompiledSegmenter(folder, manifest, presegmenter=presegmenter, model_name="fp32")
    store: list[list[np.ndarray]] = []
    _recorder(fp32, store)
    for _, image, _ in _slices(cases[:args.calibration]):
        fp32.segment(image)
    fp32 = CompiledSegmenter(folder, manifest, presegmenter=presegmenter, model_name="fp32")
    with tempfile.TemporaryDirectory() as scratch:
        int8_folder = quantised_bundle(folder, manifest, store, Path(scratch) / "int8")
        int8 = CompiledSegmenter(int8_folder, manifest, presegmenter=presegmenter, model_name="int8")
        rows, seconds = [], {"fp32": [], "int8": []}
        for case, image, truth in _slices(cases[args.calibration:]):
            results = {}
            for name, segmenter in (("fp32", fp32), ("int8", int8)):
                started = time.perf_counter()
                results[name] = segmenter.segment(image).labels[0]
                seconds[name].append(time.perf_counter() - started)
            rows.append({"case": case, "agreement": dice_per_class(results["int8"], results["fp32"]).tolist(),
                         "fp32_vs_truth": dice_per_class(results["fp32"], truth).tolist(),
                         "int8_vs_truth": dice_per_class(results["int8"], truth).tolist()})
        passes = {"fp32": [], "int8": []}
        for _ in range(args.repeats):
            for name, segmenter in (("fp32", fp32), ("int8", int8)):
                passes[name].append(_pass_seconds(segmenter, store[0]))
    summary = {key: np.mean([row[key] for row in rows], axis=0).round(4).tolist()
               for key in ("agreement", "fp32_vs_truth", "int8_vs_truth")}
    print(f"{len(rows)} patients (not used for calibration; all were in the shipped models' training), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("mean Dice SC, VB, IVD:", json.dumps(summary))
    print("mean Dice (mean of SC, VB, IVD):", {k: round(float(np.mean(v)), 4) for k, v in summary.items()})
    for name in ("fp32", "int8"):
        print(f"{name}: denoiser pass (batch 15) median {statistics.median(passes[name]):.3f} s "
              f"(min {min(passes[name]):.3f}), whole slice median {statistics.median(seconds[name]):.3f} s")


if __name__ == "__main__":
    main()
