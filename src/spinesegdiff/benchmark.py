"""Sampling speed: the authors' procedure against our sampler, same weights, same slice, same run.

(a) reference: ``S`` separate DDIM chains of 50 steps one after another, batch 1, the image encoder once per
chain, float32 (the public reference code's procedure, with its fusion corrected so the outputs are
comparable); (b) ours: ``S`` samples batched in one forward pass per step, ``K = Ts = 10`` steps, the image
encoder once, bfloat16 where the CPU runs it natively; (b32) the same in float32; (c) (b32) through ONNX
Runtime, when it is installed. Seconds per slice are wall time on this machine.
"""

from __future__ import annotations

import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from spinesegdiff.inference import SamplerSettings, Segmenter
from spinesegdiff.metrics import dice_per_class


def _sample_slice(data_dir: Path | None) -> tuple[np.ndarray, str]:
    """A real central slice (first series of ``data_dir``) if given, else a phantom slice; uint8 (320, 320)."""
    from spinesegdiff.io import read_image
    from spinesegdiff.preprocess import prepare_scan

    if data_dir is not None:
        from spinesegdiff.spider import find_cases

        case = find_cases(data_dir, require_masks=False)[0]
        volume, geometry = read_image(case.image_path)
        return prepare_scan(volume, geometry).images[0], f"SPIDER {case.case_id} central slice"
    from spinesegdiff.phantom import make_phantom

    phantom = make_phantom(shape=(3, 256, 200))
    return prepare_scan(phantom.image, phantom.geometry).images[0], "phantom central slice"


def _timed(function, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def run_benchmark(model: str | Path, *, data_dir: Path | None = None, samples: int = 15, steps: int = 10,
                  fuse_steps: int = 10, reference_steps: int = 50, threads: int | None = None,
                  repeats: int = 2, onnx: bool = True, precision: str = "auto") -> list[dict]:
    """Time the procedures on one slice and return one row per procedure (the CLI prints them as a table).

    (a) runs in float32 as the authors did; (b) is our default sampler (``precision``, ``auto`` = bfloat16
    where the CPU runs it natively); (b32) is the same sampler in float32; (c) is (b32) through ONNX Runtime.
    """
    if threads:
        torch.set_num_threads(threads)
    fp32_settings = SamplerSettings(num_samples=samples, num_steps=steps, fuse_steps=fuse_steps, precision="fp32")
    fp32 = Segmenter.from_checkpoint(model, device="cpu", settings=fp32_settings, quiet=True)
    image, source = _sample_slice(data_dir)
    rows = []
    reference_seconds, reference = _timed(
        lambda: fp32.segment(image, reference_procedure=True, reference_steps=reference_steps), 1)
    rows.append({"procedure": f"(a) authors: {samples} chains x {reference_steps} DDIM steps, batch 1, fp32",
                 "seconds": reference_seconds, "network_calls": reference.network_calls})

    def add(name: str, segmenter: Segmenter) -> None:
        segmenter.segment(image)  # warm-up (allocator, oneDNN primitives)
        seconds, result = _timed(lambda: segmenter.segment(image), repeats)
        agreement = dice_per_class(result.labels[0], baseline.labels[0]).mean()
        rows.append({"procedure": name, "seconds": seconds, "network_calls": result.network_calls,
                     "label_agreement_with_b32": round(float(agreement), 4)})

    baseline = fp32.segment(image)
    ours = Segmenter(fp32.model, fp32.model_config, fp32.train_config, device=torch.device("cpu"),
                     settings=replace(fp32_settings, precision=precision))
    add(f"(b) ours: S={samples} batched, K={steps}, Ts={fuse_steps}, {ours.describe()['precision']}", ours)
    add("(b32) ours in fp32", fp32)
    if onnx:
        from spinesegdiff.onnx_backend import OnnxDenoiser, onnx_runtime_available

        if onnx_runtime_available():
            started = time.perf_counter()
            onnx_model = OnnxDenoiser(fp32.model, threads=threads or torch.get_num_threads())
            export_seconds = time.perf_counter() - started
            fast = Segmenter(onnx_model, fp32.model_config, fp32.train_config,  # type: ignore[arg-type]
                             device=torch.device("cpu"), settings=fp32_settings)
            add(f"(c) ours in fp32 through ONNX Runtime (export {export_seconds:.1f} s, once)", fast)
    meta = {"slice": source, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__}
    for row in rows:
        row["speedup_vs_a"] = reference_seconds / row["seconds"]
        row.update(meta)
    return rows
