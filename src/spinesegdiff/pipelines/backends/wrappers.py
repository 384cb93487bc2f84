"""Graph-export views of a network for the CPU runtimes (ONNX Runtime, OpenVINO).

Exported graphs take positional tensors only, so the image-encoder features travel as separate inputs.
"""

from __future__ import annotations

import torch


class DenoiserWithFeatures(torch.nn.Module):
    """``forward(x_t, t, image, *features)`` -> logits, the network's denoiser with its IE features as inputs."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, image: torch.Tensor, *features: torch.Tensor):
        return self.net(x_t, t, image=image, image_features=list(features) if features else None)


class ImageEncoderOutputs(torch.nn.Module):
    """``forward(image)`` -> the image-encoder features as a tuple."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        return tuple(self.net.encode_image(image))


def example_denoiser_inputs(net: torch.nn.Module, size: int, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Zero tensors shaped as a denoiser call at ``batch`` samples: ``(x_t, t, image, *features)``."""
    image = torch.zeros(1, net.config.image_channels, size, size)
    features: tuple[torch.Tensor, ...] = ()
    if getattr(net, "has_image_encoder", False):
        with torch.no_grad():
            features = tuple(f.expand(batch, *f.shape[1:]).contiguous() for f in net.encode_image(image))
    x_t = torch.zeros(batch, net.config.mask_channels, size, size)
    t = torch.zeros(batch, dtype=torch.int64)
    return (x_t, t, image.expand(batch, -1, -1, -1).contiguous(), *features)


def repeat_inputs_to_batch(x_t: torch.Tensor, t: torch.Tensor | int, image: torch.Tensor,
                           image_features: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """The sampler's call ``(x_t (N, ...), t, image (B, ...), features (B, ...))`` as equal-batch tensors.

    ``N`` is a multiple of ``B`` (``S`` samples per image, image-major); ``t`` may be a scalar.
    """
    batch = x_t.shape[0]

    def repeat(tensor: torch.Tensor) -> torch.Tensor:
        return tensor if tensor.shape[0] == batch else tensor.repeat_interleave(batch // tensor.shape[0], dim=0)

    if not torch.is_tensor(t) or t.ndim == 0:
        t = torch.full((batch,), int(t), dtype=torch.int64)
    return [x_t, t.to(torch.int64), repeat(image), *(repeat(f) for f in image_features or [])]


class SegmenterProbabilities(torch.nn.Module):
    """``forward(image)`` -> a segmentation U-Net's class probabilities (softmax over the channel axis)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).float().softmax(dim=1)
