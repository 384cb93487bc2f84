"""A plain segmentation U-Net: the built-in presegmenter and the non-diffusion baseline.

The SpineSegDiff denoiser's layout (residual blocks of 3x3 conv, instance norm, LeakyReLU; max pooling down,
transposed convolutions up, skip concatenation; optional pixel-unshuffle stem) on the image alone, without
timestep embedding, noisy mask or image encoder. It returns logits over the 4 classes (background, canal,
vertebra, disc) and is trained with Dice + cross-entropy.
"""

from __future__ import annotations

import torch
from torch import nn

from spinesegdiff.models.blocks import ResidualBlock, check_spatial_size
from spinesegdiff.models.config import ModelConfig


class SegmentationUNet(nn.Module):
    """``net(image)`` -> ``(B, mask_channels + 1, H, W)`` class logits.

    Args:
        config: a :class:`ModelConfig` with variant ``unet`` (``widths``, ``patch_size``, ``norm``,
            ``negative_slope``, ``dropout`` are used).

    Shapes: ``image`` is ``(B, image_channels, H, W)`` in ``[-1, 1]``, ``H`` and ``W`` multiples of
    ``config.size_divisor``.
    """

    has_image_encoder = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.variant != "unet":
            raise ValueError(f"SegmentationUNet builds variant 'unet', not {config.variant!r}")
        self.config = config
        widths = config.widths
        block = {"time_dim": None, "norm": config.norm, "negative_slope": config.negative_slope,
                 "dropout": config.dropout}
        patch = config.patch_size
        self.unshuffle = nn.PixelUnshuffle(patch) if patch > 1 else nn.Identity()
        self.shuffle = nn.PixelShuffle(patch) if patch > 1 else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.down = nn.ModuleList(
            [ResidualBlock(config.image_channels * patch**2, widths[0], **block)]
            + [ResidualBlock(widths[i - 1], widths[i], **block) for i in range(1, len(widths))]
        )
        self.upsample = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2) for i in range(len(widths) - 1, 0, -1)]
        )
        self.up = nn.ModuleList(
            [ResidualBlock(2 * widths[i - 1], widths[i - 1], **block) for i in range(len(widths) - 1, 0, -1)]
        )
        self.num_classes = config.mask_channels + 1
        self.head = nn.Conv2d(widths[0], self.num_classes * patch**2, kernel_size=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_spatial_size(image, self.config.size_divisor, "image")
        if image.shape[1] != self.config.image_channels:
            raise ValueError(f"image must have {self.config.image_channels} channels, got {image.shape[1]}")
        h = self.unshuffle(image)
        skips = []
        for index, level in enumerate(self.down):
            h = level(h if index == 0 else self.pool(h))
            skips.append(h)
        h = skips.pop()
        for upsample, level in zip(self.upsample, self.up, strict=True):
            h = level(torch.cat([skips.pop(), upsample(h)], dim=1))
        return self.shuffle(self.head(h))
