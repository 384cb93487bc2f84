"""Sampling speed: the authors' procedure against our sampler, same weights, same slice, same run.

(a) reference: ``S`` separate DDIM chains of 50 steps one after another, batch 1, the image encoder once per
chain, float32 (the public reference code's procedure, with its fusion corrected so the outputs are
comparable); (b) ours: ``S`` samples batched in one forward pass per step, ``K = Ts = 10`` steps, the image
encoder once, bfloat16 where the CPU runs it natively, OpenVINO where it is installed; (bt) the same in
PyTorch; (b32) ours in PyTorch float32; (c) (b32) through ONNX Runtime, when it is installed; (a') the
authors' procedure through (b)'s network. Seconds per slice are wall time on this machine.
"""

from __future__ import annotations

import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter


def _sample_slice(data_dir: Path | None) -> tuple[np.ndarray, str]:
    """A real central slice (first series of ``data_dir``) if given, else a phantom slice; uint8 (320, 320)."""
    from spinesegdiff.data.io import read_image
    from spinesegdiff.data.preprocess import prepare_scan

    if data_dir is not None:
        from spinesegdiff.data.spider import find_cases

        case = find_cases(data_dir, require_masks=False)[0]
        volume, geometry = read_image(case.image_path)
        return prepare_scan(volume, geometry).images[0], f"SPIDER {case.case_id} central slice"
    from spinesegdiff.data.phantom import make_phantom

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
                  repeats: int = 2, onnx: bool = True, precision: str = "auto", backend: str = "auto",
                  reference_same_backend: bool = True) -> list[dict]:
    """Time the procedures on one slice and return one row per procedure (the CLI prints them as a table).

    (a) is the authors' procedure in PyTorch float32, as they ran it; (b) is our default sampler
    (``precision`` and ``backend``, ``auto``: bfloat16 where the CPU runs it natively, OpenVINO where it is
    installed); (bt) the same in PyTorch when (b) is not PyTorch; (b32) our sampler in PyTorch float32; (c) (b32)
    through ONNX Runtime; (a') the authors' procedure through (b)'s network, which separates the sampler's share
    of the speed-up from the runtime's.
    """
    if threads:
        torch.set_num_threads(threads)
    fp32_settings = SamplerSettings(num_samples=samples, num_steps=steps, fuse_steps=fuse_steps, precision="fp32",
                                    backend="torch")
    fp32 = Segmenter.from_checkpoint(model, device="cpu", settings=fp32_settings, quiet=True)
    network = fp32.model
    image, source = _sample_slice(data_dir)
    rows = []
    reference_seconds, reference = _timed(
        lambda: fp32.segment(image, reference_procedure=True, reference_steps=reference_steps), 1)
    rows.append({"procedure": f"(a) authors: {samples} chains x {reference_steps} DDIM steps, batch 1, "
                              "PyTorch fp32",
                 "seconds": reference_seconds, "network_calls": reference.network_calls})

    def build(**changes) -> tuple[Segmenter, float]:
        started = time.perf_counter()
        segmenter = Segmenter(network, fp32.model_config, fp32.train_config, device=torch.device("cpu"),
                              settings=replace(fp32_settings, **changes))
        return segmenter, time.perf_counter() - started

    def add(name: str, segmenter: Segmenter) -> None:
        segmenter.segment(image)  # warm-up (allocator, oneDNN primitives)
        seconds, result = _timed(lambda: segmenter.segment(image), repeats)
        agreement = dice_per_class(result.labels[0], baseline.labels[0]).mean()
        rows.append({"procedure": name, "seconds": seconds, "network_calls": result.network_calls,
                     "label_agreement_with_b32": round(float(agreement), 4)})

    def label(segmenter: Segmenter) -> str:
        described = segmenter.describe()
        return f"{'OpenVINO' if described['backend'] == 'openvino' else 'PyTorch'} {described['precision']}"

    baseline = fp32.segment(image)
    ours, setup_seconds = build(precision=precision, backend=backend)
    setup = f" (conversion {setup_seconds:.1f} s, once)" if ours.backend == "openvino" else ""
    add(f"(b) ours: S={samples} batched, K={steps}, Ts={fuse_steps}, {label(ours)}{setup}", ours)
    if ours.backend != "torch":
        torch_ours, _ = build(precision=precision, backend="torch")
        add(f"(bt) ours in {label(torch_ours)}", torch_ours)
    add("(b32) ours in PyTorch fp32", fp32)
    if onnx:
        from spinesegdiff.pipelines.backends.onnx import OnnxDenoiser, onnx_runtime_available

        if onnx_runtime_available():
            started = time.perf_counter()
            onnx_model = OnnxDenoiser(network, threads=threads or torch.get_num_threads())
            export_seconds = time.perf_counter() - started
            fast = Segmenter(onnx_model, fp32.model_config, fp32.train_config,  # type: ignore[arg-type]
                             device=torch.device("cpu"), settings=fp32_settings)
            add(f"(c) ours in fp32 through ONNX Runtime (export {export_seconds:.1f} s, once)", fast)
    if reference_same_backend and (ours.backend, ours.dtype) != ("torch", torch.float32):
        seconds, result = _timed(
            lambda: ours.segment(image, reference_procedure=True, reference_steps=reference_steps), 1)
        rows.append({"procedure": f"(a') authors' procedure through (b)'s network, {label(ours)}",
                     "seconds": seconds, "network_calls": result.network_calls})
    meta = {"slice": source, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__}
    for row in rows:
        row["speedup_vs_a"] = reference_seconds / row["seconds"]
        row.update(meta)
    return rows
