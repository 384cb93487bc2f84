"""Sampling speed: the authors' procedure against our sampler, same weights, same slice, same run.

(a) reference: ``S`` separate DDIM chains of 50 steps one after another, batch 1, the image encoder once per
chain, float32 (the public reference code's procedure, with its fusion corrected so the outputs are
comparable); (b) ours: ``S`` samples batched in one forward pass per step, ``K = Ts = 10`` steps, the image
encoder once, bfloat16 where the CPU runs it natively, OpenVINO where it is installed; (bt) the same in
PyTorch; (b32) ours in PyTorch float32; (c) (b32) through ONNX Runtime, when it is installed; (a') the
authors' procedure through (b)'s network. Seconds per slice are wall time on this machine, with as many
threads as PyTorch is set to use (the caller sets them: this module changes no global setting).
"""

from __future__ import annotations

import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from spinesegdiff.errors import MissingInputError
from spinesegdiff.evaluation.held_out import segment_timed
from spinesegdiff.evaluation.metrics import dice_per_class
from spinesegdiff.pipelines.segmenter import SamplerSettings, Segmenter
from spinesegdiff.pipelines.settings import FUSED_STEPS, SAMPLES_FROM_NOISE, STEPS_FROM_NOISE


def benchmark_slice(data_dir: Path | None) -> tuple[np.ndarray, str]:
    """A real central slice (first series of ``data_dir``) if given, else a phantom slice; uint8 (320, 320),
    and where it comes from."""
    from spinesegdiff.data.io import read_image
    from spinesegdiff.data.preprocess import prepare_scan

    if data_dir is not None:
        from spinesegdiff.data.spider import find_cases

        if not Path(data_dir).exists():
            raise MissingInputError(data_dir, "SPIDER folder")
        case = find_cases(data_dir, require_masks=False)[0]
        volume, geometry = read_image(case.image_path)
        return prepare_scan(volume, geometry).images[0], f"SPIDER {case.case_id} central slice"
    from spinesegdiff.data.phantom import make_phantom

    phantom = make_phantom(shape=(3, 256, 200))
    return prepare_scan(phantom.image, phantom.geometry).images[0], "phantom central slice (no --data given)"


def _reference_row(segmenter: Segmenter, image: np.ndarray, name: str, reference_steps: int) -> dict:
    """The authors' procedure (``S`` chains one after another) through ``segmenter``'s network, timed once."""
    timed = segment_timed(lambda x: segmenter.segment(x, reference_procedure=True, reference_steps=reference_steps),
                          image[None], per_slice=False)
    return {"procedure": name, "seconds": timed.seconds, "network_calls": timed.outputs[0].network_calls}


def _label(segmenter: Segmenter) -> str:
    described = segmenter.describe()
    return f"{'OpenVINO' if described['backend'] == 'openvino' else 'PyTorch'} {described['precision']}"


def run_benchmark(model: str | Path, *, data_dir: Path | None = None, samples: int = SAMPLES_FROM_NOISE,
                  steps: int = STEPS_FROM_NOISE, fuse_steps: int = FUSED_STEPS, reference_steps: int = 50,
                  repeats: int = 2, onnx: bool = True, precision: str = "auto", backend: str = "auto",
                  reference_same_backend: bool = True) -> list[dict]:
    """Time the procedures on one slice and return one row per procedure (:func:`benchmark_table` prints them).

    (a) is the authors' procedure in PyTorch float32, as they ran it; (b) is our default sampler
    (``precision`` and ``backend``, ``auto``: bfloat16 where the CPU runs it natively, OpenVINO where it is
    installed); (bt) the same in PyTorch when (b) is not PyTorch; (b32) our sampler in PyTorch float32; (c) (b32)
    through ONNX Runtime; (a') the authors' procedure through (b)'s network, which separates the sampler's share
    of the speed-up from the runtime's. ``data_dir``: a SPIDER folder whose first series gives the slice (a
    phantom slice without it; a folder that does not exist is a :class:`~spinesegdiff.errors.MissingInputError`).
    """
    image, source = benchmark_slice(data_dir)
    fp32_settings = SamplerSettings(num_samples=samples, num_steps=steps, fuse_steps=fuse_steps, precision="fp32",
                                    backend="torch")
    fp32 = Segmenter.from_checkpoint(model, device="cpu", settings=fp32_settings, quiet=True)
    network = fp32.model
    rows = [_reference_row(fp32, image, f"(a) authors: {samples} chains x {reference_steps} DDIM steps, batch 1, "
                                        "PyTorch fp32", reference_steps)]

    def build(**changes) -> tuple[Segmenter, float]:
        started = time.perf_counter()
        segmenter = Segmenter(network, fp32.model_config, fp32.train_config, device=torch.device("cpu"),
                              settings=replace(fp32_settings, **changes), scheduler_config=fp32.scheduler_config)
        return segmenter, time.perf_counter() - started

    def add(name: str, segmenter: Segmenter) -> None:
        timed = segment_timed(segmenter.segment, image[None], per_slice=False, warm_up=True, repeats=repeats)
        result = timed.outputs[0]
        agreement = dice_per_class(result.labels[0], baseline.labels[0]).mean()
        rows.append({"procedure": name, "seconds": timed.seconds, "network_calls": result.network_calls,
                     "label_agreement_with_b32": round(float(agreement), 4)})

    baseline = fp32.segment(image)
    ours, setup_seconds = build(precision=precision, backend=backend)
    setup = f" (conversion {setup_seconds:.1f} s, once)" if ours.backend == "openvino" else ""
    add(f"(b) ours: S={samples} batched, K={steps}, Ts={fuse_steps}, {_label(ours)}{setup}", ours)
    if ours.backend != "torch":
        torch_ours, _ = build(precision=precision, backend="torch")
        add(f"(bt) ours in {_label(torch_ours)}", torch_ours)
    add("(b32) ours in PyTorch fp32", fp32)
    if onnx:
        from spinesegdiff.pipelines.backends.onnx import OnnxDenoiser, onnx_runtime_available

        if onnx_runtime_available():
            started = time.perf_counter()
            onnx_model = OnnxDenoiser(network, threads=torch.get_num_threads())
            export_seconds = time.perf_counter() - started
            fast = Segmenter(onnx_model, fp32.model_config, fp32.train_config,  # type: ignore[arg-type]
                             device=torch.device("cpu"), settings=fp32_settings,
                             scheduler_config=fp32.scheduler_config)
            add(f"(c) ours in fp32 through ONNX Runtime (export {export_seconds:.1f} s, once)", fast)
    if reference_same_backend and (ours.backend, ours.dtype) != ("torch", torch.float32):
        rows.append(_reference_row(ours, image, f"(a') authors' procedure through (b)'s network, {_label(ours)}",
                                   reference_steps))
    meta = {"slice": source, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__}
    for row in rows:
        row["speedup_vs_a"] = rows[0]["seconds"] / row["seconds"]
        row.update(meta)
    return rows


def benchmark_table(rows: list[dict]) -> str:
    """The rows as ``spinesegdiff benchmark`` prints them: where the slice came from, then a Markdown table."""
    lines = [f"{rows[0]['slice']}; {rows[0]['machine']}; torch {rows[0]['torch']}",
             "| procedure | s / slice | network calls | speed-up vs (a) | label Dice vs (b32) |",
             "|---|---|---|---|---|"]
    for row in rows:
        agreement = row.get("label_agreement_with_b32", "")
        lines.append(f"| {row['procedure']} | {row['seconds']:.2f} | {row['network_calls']} | "
                     f"{row['speedup_vs_a']:.1f}x | {agreement} |")
    return "\n".join(lines)
