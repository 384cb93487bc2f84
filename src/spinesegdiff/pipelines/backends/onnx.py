"""Optional ONNX Runtime backend for CPU sampling (``pip install 'spinesegdiff[onnx]'``).

The denoiser (with the image-encoder features as inputs) and the image encoder are exported once to ONNX in
memory and run by ONNX Runtime; :class:`OnnxDenoiser` behaves like the PyTorch network towards the sampler
(``encode_image``, ``has_image_encoder``, ``__call__(x_t, t, image, image_features)``), so the sampling code is
the same. Outputs match PyTorch to float32 round-off (checked in the tests).
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import torch

from spinesegdiff.pipelines.backends.wrappers import (
    DenoiserWithFeatures,
    ImageEncoderOutputs,
    example_denoiser_inputs,
    repeat_inputs_to_batch,
)


def onnx_runtime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _export(module: torch.nn.Module, args: tuple, input_names: list[str], output_names: list[str],
            dynamic: dict[str, dict[int, str]]) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the tracer warns about shape checks that are constant for this export
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return buffer.getvalue()


class OnnxDenoiser:
    """An ONNX Runtime copy of a :class:`~spinesegdiff.models.SpineSegDiffNet` (or any network of the family).

    Args:
        net: the PyTorch network (exported from a CPU copy in eval mode; the network itself is left as it is).
        size: the square input size it will be run at (320).
        threads: intra-op threads for ONNX Runtime (``None``: its default).
    """

    def __init__(self, net: torch.nn.Module, *, size: int = 320, threads: int | None = None) -> None:
        import onnxruntime as ort

        net = copy.deepcopy(net).eval().cpu()  # the caller's network keeps its mode and device
        self.has_image_encoder = bool(getattr(net, "has_image_encoder", False))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # exported at equal batches: a call repeats image and features to the sample batch N first
        example = example_denoiser_inputs(net, size)
        self._num_features = len(example) - 3
        feature_names = [f"feature{i}" for i in range(self._num_features)]
        if self.has_image_encoder:
            encoder = _export(ImageEncoderOutputs(net), (example[2][:1],), ["image"], feature_names,
                              {"image": {0: "batch"}} | {n: {0: "batch"} for n in feature_names})
            self._encoder = ort.InferenceSession(encoder, options, providers=["CPUExecutionProvider"])
        self._input_names = ["x_t", "t", "image", *feature_names]
        dynamic = {name: {0: "n"} for name in [*self._input_names, "logits"]}
        denoiser = _export(DenoiserWithFeatures(net), example, self._input_names, ["logits"], dynamic)
        self._denoiser = ort.InferenceSession(denoiser, options, providers=["CPUExecutionProvider"])

    def encode_image(self, image: torch.Tensor) -> list[torch.Tensor]:
        outputs = self._encoder.run(None, {"image": image.cpu().numpy().astype(np.float32)})
        return [torch.from_numpy(o) for o in outputs]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, *, image: torch.Tensor,
                 image_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        if self._num_features and image_features is None:
            image_features = self.encode_image(image)
        inputs = repeat_inputs_to_batch(x_t, t, image, image_features if self._num_features else None)
        feeds = {name: tensor.cpu().numpy() for name, tensor in zip(self._input_names, inputs, strict=True)}
        feeds = {name: array if name == "t" else array.astype(np.float32) for name, array in feeds.items()}
        return torch.from_numpy(self._denoiser.run(["logits"], feeds)[0])
