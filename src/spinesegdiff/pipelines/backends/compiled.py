"""The torch-free CPU path: a model file's networks converted once to OpenVINO, then run from NumPy.

The first time a model file is used on a CPU with OpenVINO, its networks are converted (this needs PyTorch) into
a *bundle* in :func:`~spinesegdiff.pipelines.backends.openvino.cache_folder` ``/openvino/bundle-<digest>``:
the U-Net (image -> class probabilities), or the image encoder and the denoiser of a diffusion model, as
OpenVINO IR, with a manifest holding the model and training configuration and the noise schedule's
``abar_t``. The bundle is keyed by the file's SHA-256, OpenVINO's version and :data:`BUNDLE_FORMAT`, so a
changed file or runtime converts again. Every later call loads the bundle without importing PyTorch:
OpenVINO compiles it (from its own compiled-model cache, ``CACHE_DIR``) and
:mod:`~spinesegdiff.pipelines.backends.numpy_sampler` samples around it, with the same labels as the PyTorch
sampler (tested). An unwritable cache folder only means converting in every process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from spinesegdiff.pipelines.backends.numpy_sampler import TorchCompatibleNormal

BUNDLE_FORMAT = "spinesegdiff-openvino-bundle-v1"
GPU_MARKERS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd")
"""Present wherever PyTorch could find a CUDA (or ROCm) GPU; absent, the device is the CPU without asking."""


def gpu_possible() -> bool:
    """Whether a GPU driver is present (only then need ``--device auto`` import PyTorch to decide)."""
    return any(os.path.exists(marker) for marker in GPU_MARKERS)


def cpu_without_torch(choice: str, *, quiet: bool = False) -> bool:
    """Whether ``choice`` (``auto``/``cpu``/``cuda``) is surely the CPU, decided without PyTorch.

    ``auto`` on a machine without a GPU driver says so, as :func:`~spinesegdiff.devices.resolve_device` does.
    """
    if choice == "cpu":
        return True
    if choice != "auto" or gpu_possible():
        return False
    if not quiet:
        print("spinesegdiff: no CUDA GPU found, running on the CPU", file=sys.stderr)
    return True


def runtime_threads() -> int | None:
    """CPU threads for OpenVINO: PyTorch's setting when PyTorch is loaded (the command line and Ray workers set
    it), else ``OMP_NUM_THREADS``, else ``None`` (OpenVINO's default: every core)."""
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def file_digest(path: Path) -> str:
    """SHA-256 (first 20 hex digits) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]


def bundle_folder(model_file: Path, cache: Path | None = None) -> Path:
    """Where the bundle of ``model_file`` lives (whether or not it exists yet)."""
    import openvino

    from spinesegdiff.pipelines.backends.openvino import cache_folder

    runtime = hashlib.sha256(f"{BUNDLE_FORMAT}|{openvino.__version__}".encode()).hexdigest()[:8]
    return (cache_folder() if cache is None else cache) / "openvino" / f"bundle-{file_digest(model_file)}-{runtime}"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The bundle's manifest, or ``None`` when the folder holds no complete bundle of this format."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        return None
    if not all((folder / f"{name}.xml").is_file() and (folder / f"{name}.bin").is_file()
               for name in manifest.get("graphs", ())):
        return None
    return manifest


def export_bundle(net, folder: Path, *, model_config, train_config: dict | None, scheduler_config=None,
                  size: int = 320) -> dict[str, Any]:
    """Convert ``net`` (a network of the family, any device) into a bundle at ``folder`` (needs PyTorch).

    A U-Net becomes ``unet`` (image ``(N, 1, size, size)`` in [-1, 1] -> ``(N, 4, size, size)`` softmax
    probabilities); a diffusion model ``encoder`` (when it has an image encoder) and ``denoiser``
    (``x_t, t, image, *features`` -> output). Written into a scratch folder and renamed into place.

    Raises:
        OSError: the cache folder cannot be written.
    """
    import copy

    import openvino
    import torch

    from spinesegdiff.pipelines.backends.wrappers import (
        DenoiserWithFeatures,
        ImageEncoderOutputs,
        SegmenterProbabilities,
        example_denoiser_inputs,
    )

    net = copy.deepcopy(net).eval().float().cpu()
    image = torch.zeros(2, model_config.image_channels, size, size)
    if model_config.variant == "unet":
        graphs = {"unet": (SegmenterProbabilities(net), (image,))}
    else:
        example = example_denoiser_inputs(net, size)
        graphs = {"denoiser": (DenoiserWithFeatures(net), example)}
        if getattr(net, "has_image_encoder", False):
            graphs["encoder"] = (ImageEncoderOutputs(net), (image,))
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT, "openvino": openvino.__version__, "graphs": sorted(graphs), "size": size,
        "model_config": model_config.to_dict(), "train_config": train_config or {},
        "has_image_encoder": "encoder" in graphs,
    }
    if scheduler_config is not None:
        schedule = scheduler_config.noise_schedule()
        manifest["scheduler"] = scheduler_config.to_dict()
        manifest["alphas_cumprod"] = [float(a) for a in schedule.alphas_cumprod.tolist()]
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".bundle-", ignore_cleanup_errors=True) as scratch:
        for name, (module, inputs) in graphs.items():
            with warnings.catch_warnings(), torch.no_grad():  # the tracer warns about constant shape checks
                warnings.simplefilter("ignore")
                model = openvino.convert_model(module, example_input=inputs,
                                               input=[(-1, *tensor.shape[1:]) for tensor in inputs])
            openvino.save_model(model, Path(scratch) / f"{name}.xml", compress_to_fp16=False)
        (Path(scratch) / "manifest.json").write_text(json.dumps(manifest, default=str))
        try:
            os.replace(scratch, folder)
        except OSError:  # another process finished the same bundle first: keep theirs
            if read_manifest(folder) is None:
                raise
    return manifest


def openvino_precision(choice: str, core) -> str:
    """``fp32`` / ``bf16`` as asked; ``auto``: ``bf16`` where OpenVINO's CPU plugin runs it natively."""
    if choice == "auto":
        return "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "fp32"
    return choice


class CompiledGraphs:
    """A bundle's graphs compiled for the CPU: ``run(name, arrays) -> outputs``.

    Args:
        folder: the bundle.
        precision: ``auto``, ``fp32`` or ``bf16`` (the arithmetic asked of OpenVINO).
        threads: CPU threads (``None``: :func:`runtime_threads`).
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], *, precision: str = "auto",
                 threads: int | None = None) -> None:
        from spinesegdiff.pipelines.backends.openvino import openvino_core

        core = openvino_core(folder.parent)
        self.precision = openvino_precision(precision, core)
        properties: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                                      "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        threads = threads or runtime_threads()
        if threads:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        self._requests = {name: core.compile_model(str(folder / f"{name}.xml"), "CPU", properties)
                          .create_infer_request() for name in manifest["graphs"]}

    def run(self, name: str, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of graph ``name`` (copies, float32 unless integer)."""
        results = self._requests[name].infer([np.ascontiguousarray(a) for a in arrays])
        return [np.array(results[k], copy=True) for k in range(len(results))]


def compiled_bundle(model_file: Path, *, variant_check, cache: Path | None = None) -> tuple[Path, dict] | None:
    """The bundle of ``model_file`` (converted now, with PyTorch, when absent), or ``None`` when it cannot be
    had: ``variant_check(model_config)`` false, or an unwritable cache; a bad model file raises its error."""
    from spinesegdiff.models.config import ModelConfig

    folder = bundle_folder(model_file, cache)
    manifest = read_manifest(folder)
    if manifest is not None:
        return (folder, manifest) if variant_check(ModelConfig.from_dict(manifest["model_config"])) else None
    from spinesegdiff.models.checkpoint import checkpoint_scheduler, load_model

    network, config, payload = load_model(model_file, map_location="cpu")
    if not variant_check(config):
        return None
    scheduler = checkpoint_scheduler(payload, model_file) if config.variant != "unet" else None
    try:
        manifest = export_bundle(network, folder, model_config=config, train_config=payload.get("train_config"),
                                 scheduler_config=scheduler)
    except OSError:
        return None
    return folder, manifest


def build_compiled(model_file: Path, build, *, variant_check, cache: Path | None = None):
    """``build(folder, manifest)`` on the bundle of ``model_file`` (:func:`compiled_bundle`), or ``None`` where
    there is none. A bundle OpenVINO cannot compile (a damaged file) is converted again once, then given up."""
    for attempt in range(2):
        bundle = compiled_bundle(model_file, variant_check=variant_check, cache=cache)
        if bundle is None:
            return None
        try:
            return build(*bundle)
        except RuntimeError:  # OpenVINO's error for an unreadable or inconsistent IR
            if attempt:
                return None
            shutil.rmtree(bundle[0], ignore_errors=True)
    return None


def repeat_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """``(B, ...)`` -> ``(rows, ...)``, each row repeated ``rows // B`` times (image-major)."""
    return array if array.shape[0] == rows else np.repeat(array, rows // array.shape[0], axis=0)


__all__ = ["BUNDLE_FORMAT", "CompiledGraphs", "TorchCompatibleNormal", "build_compiled", "bundle_folder",
           "compiled_bundle",
           "cpu_without_torch", "export_bundle", "file_digest", "gpu_possible", "read_manifest", "runtime_threads"]
