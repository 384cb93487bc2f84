"""Optional ONNX Runtime backend for CPU sampling (``pip install 'spinesegdiff[onnx]'``).

The denoiser (with the image-encoder features as inputs) and the image encoder are exported once to ONNX in
memory and run by ONNX Runtime; :class:`OnnxDenoiser` behaves like the PyTorch network towards the sampler
(``encode_image``, ``has_image_encoder``, ``__call__(x_t, t, image, image_features)``), so the sampling code is
the same. Outputs match PyTorch to float32 round-off (checked in the tests).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch


def onnx_runtime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _DenoiserWithFeatures(torch.nn.Module):
    """Export wrapper: features as separate positional inputs (ONNX has no list inputs)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor, *features: torch.Tensor):
        return self.net(x_t, t, image=image, image_features=list(features) if features else None)


class _Encoder(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        return tuple(self.net.encode_image(image))


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
        net: the PyTorch network (eval mode, CPU).
        size: the square input size it will be run at (320).
        threads: intra-op threads for ONNX Runtime (``None``: its default).
    """

    def __init__(self, net: torch.nn.Module, *, size: int = 320, threads: int | None = None) -> None:
        import onnxruntime as ort

        net = net.eval().cpu()
        self.has_image_encoder = bool(getattr(net, "has_image_encoder", False))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        image = torch.zeros(1, net.config.image_channels, size, size)
        x_t = torch.zeros(2, net.config.mask_channels, size, size)
        t = torch.zeros(2, dtype=torch.int64)
        features: tuple[torch.Tensor, ...] = ()
        if self.has_image_encoder:
            with torch.no_grad():
                features = tuple(net.encode_image(image))
            names = [f"feature{i}" for i in range(len(features))]
            encoder = _export(_Encoder(net), (image,), ["image"], names, {"image": {0: "batch"}}
                              | {n: {0: "batch"} for n in names})
            self._encoder = ort.InferenceSession(encoder, options, providers=["CPUExecutionProvider"])
        self._num_features = len(features)
        feature_names = [f"feature{i}" for i in range(len(features))]
        dynamic = {"x_t": {0: "n"}, "t": {0: "n"}, "image": {0: "n"}, "logits": {0: "n"}}
        dynamic |= {n: {0: "n"} for n in feature_names}
        # exported at equal batches: the call repeats image and features to the sample batch N first
        features = tuple(f.expand(2, *f.shape[1:]).contiguous() for f in features)
        denoiser = _export(_DenoiserWithFeatures(net), (x_t, t, image.expand(2, -1, -1, -1).contiguous(), *features),
                           ["x_t", "t", "image", *feature_names], ["logits"], dynamic)
        self._denoiser = ort.InferenceSession(denoiser, options, providers=["CPUExecutionProvider"])

    def encode_image(self, image: torch.Tensor) -> list[torch.Tensor]:
        outputs = self._encoder.run(None, {"image": image.cpu().numpy().astype(np.float32)})
        return [torch.from_numpy(o) for o in outputs]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, *, image: torch.Tensor,
                 image_features: list[torch.Tensor] | None = None) -> torch.Tensor:
        batch = x_t.shape[0]
        if image.shape[0] != batch:
            image = image.repeat_interleave(batch // image.shape[0], dim=0)
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.full((batch,), int(t), dtype=torch.int64)
        feeds = {"x_t": x_t.cpu().numpy().astype(np.float32), "t": t.cpu().numpy().astype(np.int64),
                 "image": image.cpu().numpy().astype(np.float32)}
        if self._num_features:
            if image_features is None:
                image_features = self.encode_image(image)
            image_features = [f.repeat_interleave(batch // f.shape[0], dim=0) if f.shape[0] != batch else f
                              for f in image_features]
            feeds |= {f"feature{i}": f.cpu().numpy().astype(np.float32) for i, f in enumerate(image_features)}
        return torch.from_numpy(self._denoiser.run(["logits"], feeds)[0])
