"""OpenVINO backend for CPU sampling (installed with the package on x86-64 and ARM): the fastest CPU path.

The denoiser (image-encoder features as inputs) is converted once from PyTorch with OpenVINO's own converter
and compiled for the CPU, in bfloat16 where the CPU runs it natively (AVX512-BF16 / AMX) and float32
elsewhere; the image encoder (one pass per image) stays in PyTorch float32. The converted graph is kept in a
cache folder keyed by the weights, so only the first run of a model pays the conversion (about 3 s).
:class:`OpenVinoDenoiser` behaves like the PyTorch network towards the sampler.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported by the torch-free path (cache_folder, openvino_core): PyTorch only where used
    import torch


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cache_folder() -> Path:
    """``$SPINESEGDIFF_CACHE``, else ``$XDG_CACHE_HOME/spinesegdiff``, else ``~/.cache/spinesegdiff``."""
    if os.environ.get("SPINESEGDIFF_CACHE"):
        return Path(os.environ["SPINESEGDIFF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spinesegdiff"


def openvino_core(cache: Path | None = None):
    """An ``openvino.Core`` whose compiled models are cached in ``<cache>/compiled`` (OpenVINO's ``CACHE_DIR``:
    a later process imports the compiled blob instead of compiling again); ``cache`` defaults to
    ``cache_folder() / "openvino"``. A folder that cannot be created or written leaves the cache off."""
    import openvino

    core = openvino.Core()
    folder = (cache_folder() / "openvino" if cache is None else Path(cache)) / "compiled"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError:
        return core
    core.set_property({"CACHE_DIR": str(folder)})
    return core


def weights_fingerprint(net: torch.nn.Module, size: int) -> str:
    """A short hash of the network's class, configuration, weights and input size."""
    import openvino

    digest = hashlib.sha256(f"{type(net).__name__}|{net.config}|{size}|{openvino.__version__}".encode())
    for name, tensor in net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:20]


class OpenVinoDenoiser:
    """An OpenVINO copy of a network of the family, compiled for the CPU.

    Args:
        net: the PyTorch network (any device, any dtype; converted from a CPU float32 copy, the network itself is
            left as it is).
        dtype: ``torch.bfloat16`` or ``torch.float32`` (``None``), the arithmetic OpenVINO is asked for.
        size: the square input size it will be run at (320).
        threads: CPU threads for OpenVINO (``None``: its default, all cores).
        cache: folder for the converted graph and the compiled model (``None``: :func:`cache_folder`;
            unwritable folders are skipped).
    """

    def __init__(self, net: torch.nn.Module, *, dtype: torch.dtype | None = None, size: int = 320,
                 threads: int | None = None, cache: Path | None = None) -> None:
        import openvino
        import torch

        dtype = torch.float32 if dtype is None else dtype

        self.net = copy.deepcopy(net).eval().float().cpu()  # the caller's network keeps its dtype and device
        self.has_image_encoder = bool(getattr(self.net, "has_image_encoder", False))
        self.dtype = dtype
        cache = cache_folder() if cache is None else Path(cache)
        core = openvino_core(cache / "openvino")
        model = self._converted(openvino, core, size, cache)
        properties = {"INFERENCE_PRECISION_HINT": "bf16" if dtype == torch.bfloat16 else "f32",
                      "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        self._request = core.compile_model(model, "CPU", properties).create_infer_request()

    def _converted(self, openvino, core, size: int, cache: Path):
        """The converted denoiser graph, from the cache when it holds this network's."""
        path = cache / "openvino" / f"denoiser-{weights_fingerprint(self.net, size)}.xml"
        if path.is_file():
            try:
                return core.read_model(path)
            except RuntimeError:  # a damaged cache entry: convert again
                pass
        from spinesegdiff.pipelines.backends.wrappers import DenoiserWithFeatures, example_denoiser_inputs

        example = example_denoiser_inputs(self.net, size)
        with warnings.catch_warnings():  # the tracer warns about shape checks that are constant here
            warnings.simplefilter("ignore")
            model = openvino.convert_model(DenoiserWithFeatures(self.net), example_input=example,
                                           input=[(-1, *tensor.shape[1:]) for tensor in example])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                staged = Path(scratch) / path.name
                openvino.save_model(model, staged, compress_to_fp16=False)
                os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
                os.replace(staged, path)
        except OSError:  # an unwritable cache folder: the next run converts again
            pass
        return model

    def encode_image(self, image: torch.Tensor) -> list[torch.Tensor]:
        import torch

        with torch.inference_mode():
            return self.net.encode_image(image.float().cpu())

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, *, image: torch.Tensor,
                 image_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        import torch

        from spinesegdiff.pipelines.backends.wrappers import repeat_inputs_to_batch

        if self.has_image_encoder and image_features is None:
            image_features = self.encode_image(image)
        inputs = repeat_inputs_to_batch(x_t, t, image, image_features if self.has_image_encoder else None)
        arrays = [tensor.cpu().numpy() for tensor in inputs]
        arrays = [array if index == 1 else np.ascontiguousarray(array, dtype=np.float32)
                  for index, array in enumerate(arrays)]
        logits = self._request.infer(arrays)[0]
        return torch.from_numpy(np.array(logits, dtype=np.float32, copy=True))
