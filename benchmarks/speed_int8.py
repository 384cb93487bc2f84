"""int8 post-training quantisation (NNCF) of a refiner's denoiser, measured against float32 (issue 17).

The refiner's denoiser (the graph that costs two passes of 15 samples per slice) is quantised with
``nncf.quantize`` on calibration inputs recorded from the default pipeline on ``--calibration`` SPIDER
patients; the scored patients are segmented with both graphs (same U-Net, encoder, noise and sampler).
Printed: label agreement (Dice between the float32 and int8 label maps), Dice of each against the reference
masks, and seconds per denoiser pass and per slice, the two alternating.

Without ``--fold`` the shipped refiner and U-Net are used (or ``--refiner``/``--unet``), calibrated on the
first ``--calibration`` patients and scored on the rest. The shipped models were trained on all 33 patients,
so those Dice figures are agreement on training patients and cannot decide whether int8 ships. With
``--fold K`` both runs must have been trained with test fold K of the same split: the scored patients are
that fold's test patients (the split the runs' saved settings make, as ``spinesegdiff test`` finds it,
checked against ``splits_final.json`` beside the refiner), and calibration takes the first ``--calibration``
of the fold's training patients only. That held-out Dice decides issue 17.

    pip install nncf
    python benchmarks/speed_int8.py --data ../shared/data/spider-t2space [--calibration 8] [--repeats 5]
    python benchmarks/speed_int8.py --data ../shared/data/spider-t2space --fold 0 \
        --refiner runs/refiner-general-fold0/best.pt --unet runs/unet-general-fold0/best.pt
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
from spinesegdiff.data.folds import run_fold_settings
from spinesegdiff.data.io import read_image
from spinesegdiff.data.labels import to_classes
from spinesegdiff.data.preprocess import prepare_scan
from spinesegdiff.data.spider import find_cases
from spinesegdiff.data.splits import Split, apply_split, load_split, make_patient_folds, patient_of
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.models.checkpoint import load_checkpoint, resolve_model_file
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


def _run_split(model_file: Path, fold: int, case_ids: list[str]) -> Split:
    """The patient split a run was trained on (from the settings saved in its checkpoint), over ``case_ids``.

    Raises:
        SystemExit: the run was not trained with test fold ``fold``.
    """
    _, _, settings = run_fold_settings(load_checkpoint(model_file).get("train_config") or {})
    if settings.fold != fold:
        raise SystemExit(f"{model_file}: trained with test fold {settings.fold}, not --fold {fold}")
    if settings.split_file:
        return apply_split(load_split(settings.split_file), case_ids, source=settings.split_file)
    return make_patient_folds(case_ids, num_folds=settings.num_folds, seed=settings.split_seed)


def fold_cases(cases, fold: int, refiner: Path, unet: Path) -> tuple[list, list]:
    """``(training cases, held-out cases)`` of test fold ``fold``, as both runs' saved settings split the data.

    Raises:
        SystemExit: a run was trained on another fold or split, or the split disagrees with the refiner
            run's own ``splits_final.json``.
    """
    case_ids = [case.case_id for case in cases]
    split = _run_split(refiner, fold, case_ids)
    test = {patient_of(c) for c in split[fold]["test"]}
    if {patient_of(c) for c in _run_split(unet, fold, case_ids)[fold]["test"]} != test:
        raise SystemExit(f"{unet} and {refiner} hold out different patients in fold {fold}")
    saved = refiner.parent / "splits_final.json"
    if saved.is_file() and {patient_of(c) for c in apply_split(load_split(saved), case_ids)[fold]["test"]} != test:
        raise SystemExit(f"{saved} disagrees with the split of {refiner}'s settings in fold {fold}")
    train = {patient_of(c) for c in split[fold]["train"]}
    return ([c for c in cases if patient_of(c.case_id) in train],
            [c for c in cases if patient_of(c.case_id) in test])


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
    parser.add_argument("--refiner", type=Path, help="refiner checkpoint or run folder (default: the shipped one)")
    parser.add_argument("--unet", type=Path, help="presegmenter U-Net checkpoint or run folder (default: shipped)")
    parser.add_argument("--fold", type=int, help="score the held-out test fold K of the --refiner/--unet runs; "
                                                 "calibrate on that fold's training patients only")
    args = parser.parse_args()
    cases = sorted(find_cases(args.data), key=lambda c: c.case_id)
    refiner = default_refiner_path() if args.refiner is None else resolve_model_file(args.refiner)
    if args.fold is None:
        calibration_cases, scored_cases = cases[:args.calibration], cases[args.calibration:]
        scored_note = "not used for calibration"
    else:
        if args.refiner is None or args.unet is None:
            parser.error("--fold needs --refiner and --unet (the shipped models were trained on every patient)")
        unet = resolve_model_file(args.unet)
        training, scored_cases = fold_cases(cases, args.fold, refiner, unet)
        calibration_cases = training[:args.calibration]
        scored_note = f"held-out test fold {args.fold} of both runs"
        if {c.case_id for c in calibration_cases} & {c.case_id for c in scored_cases}:
            raise SystemExit("calibration and held-out patients overlap")
    print("calibration:", " ".join(c.case_id for c in calibration_cases))
    print("scored:", " ".join(c.case_id for c in scored_cases))
    folder, manifest = compiled_bundle(refiner, variant_check=lambda c: c.variant != "unet")
    presegmenter = CompiledPresegmenter.from_checkpoint(args.unet)
    fp32 = CompiledSegmenter(folder, manifest, presegmenter=presegmenter, model_name="fp32")
    store: list[list[np.ndarray]] = []
    _recorder(fp32, store)
    for _, image, _ in _slices(calibration_cases):
        fp32.segment(image)
    fp32 = CompiledSegmenter(folder, manifest, presegmenter=presegmenter, model_name="fp32")
    with tempfile.TemporaryDirectory() as scratch:
        int8_folder = quantised_bundle(folder, manifest, store, Path(scratch) / "int8")
        int8 = CompiledSegmenter(int8_folder, manifest, presegmenter=presegmenter, model_name="int8")
        rows, seconds = [], {"fp32": [], "int8": []}
        for case, image, truth in _slices(scored_cases):
            results = {}
            for name, segmenter in (("fp32", fp32), ("int8", int8)):
                started = time.perf_counter()
                results[name] = segmenter.segment(image).labels[0]
                seconds[name].append(time.perf_counter() - started)
            rows.append({"case": case, "agreement": dice_per_class(results["int8"], results["fp32"]).tolist(),
                         "fp32_vs_truth": dice_per_class(results["fp32"], truth).tolist(),
                         "int8_vs_truth": dice_per_class(results["int8"], truth).tolist()})
            print(json.dumps({k: np.round(v, 4).tolist() if k != "case" else v for k, v in rows[-1].items()}))
        passes = {"fp32": [], "int8": []}
        for _ in range(args.repeats):
            for name, segmenter in (("fp32", fp32), ("int8", int8)):
                passes[name].append(_pass_seconds(segmenter, store[0]))
    summary = {key: np.mean([row[key] for row in rows], axis=0).round(4).tolist()
               for key in ("agreement", "fp32_vs_truth", "int8_vs_truth")}
    print(f"{len(rows)} patients ({scored_note}), {len(calibration_cases)} calibration patients, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("mean Dice SC, VB, IVD:", json.dumps(summary))
    print("mean Dice (mean of SC, VB, IVD):", {k: round(float(np.mean(v)), 4) for k, v in summary.items()})
    for name in ("fp32", "int8"):
        print(f"{name}: denoiser pass (batch 15) median {statistics.median(passes[name]):.3f} s "
              f"(min {min(passes[name]):.3f}), whole slice median {statistics.median(seconds[name]):.3f} s")


if __name__ == "__main__":
    main()
