"""The SpineSegDiff dual-encoder network (paper Fig. 1), after Diff-UNet (Xing et al., 2023).

Two encoders of the same depth:

* the denoising U-Net sees ``concat(y, x_t)`` (``image_channels + mask_channels`` channels) and the timestep;
* the image encoder (IE) sees the image ``y`` alone; its feature map at every level is ADDED to the denoiser's
  encoder output at that level, before it feeds the next level and the skip connection.

Each level is a :class:`~spinesegdiff.models.blocks.ResidualBlock` (3x3 conv, instance norm, LeakyReLU 0.1,
twice, the timestep embedding added after the first conv); levels are linked by 2x2 max pooling on the way
down and 2x2 transposed convolutions on the way up, with skip concatenation. The output is mask
LOGITS; the ``x0`` estimate for the sampler is ``2 * sigmoid(logits) - 1``.

The IE depends on the image only, so a sampler calls :meth:`SpineSegDiffNet.encode_image` once per image and
passes the features to every step: ``net(x_t, t, image=y, image_features=features)``.
"""

from __future__ import annotations

import torch
from torch import nn

from spinesegdiff.models.blocks import (
    ResidualBlock,
    TimestepEmbedding,
    add_broadcast,
    check_spatial_size,
    repeat_to_batch,
    timestep_batch,
)
from spinesegdiff.models.config import ModelConfig


class ImageEncoder(nn.Module):
    """Multi-scale encoder of the image: level ``i`` has ``widths[i]`` channels at ``1 / 2**i`` resolution.

    Slices by default; Diff-UNet 3D passes ``dims=3`` with its in-plane ``pool`` and ``unshuffle`` for slabs.
    """

    def __init__(self, config: ModelConfig, *, dims: int = 2, pool: nn.Module | None = None,
                 unshuffle: nn.Module | None = None) -> None:
        super().__init__()
        block = {
            "time_dim": None,
            "norm": config.norm,
            "negative_slope": config.negative_slope,
            "dropout": 0.0,
            "dims": dims,
        }
        widths = config.widths
        self.pool = pool if pool is not None else nn.MaxPool2d(2)
        if unshuffle is None:
            unshuffle = nn.PixelUnshuffle(config.patch_size) if config.patch_size > 1 else nn.Identity()
        self.unshuffle = unshuffle
        self.levels = nn.ModuleList(
            [ResidualBlock(config.image_channels * config.patch_size**2, widths[0], **block)]
            + [ResidualBlock(widths[i - 1], widths[i], **block) for i in range(1, len(widths))]
        )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features = []
        h = self.unshuffle(image)
        for index, level in enumerate(self.levels):
            h = level(h if index == 0 else self.pool(h))
            features.append(h)
        return features


class SpineSegDiffNet(nn.Module):
    """Denoising U-Net on ``concat(y, x_t)`` with an optional image encoder; predicts ``x0`` as logits.

    Args:
        config: a :class:`ModelConfig` with variant ``spinesegdiff``, ``diffunet2d`` (with IE) or
            ``spinesegdiff_no_ie`` (without).

    Shapes: image ``y`` is ``(B, image_channels, H, W)`` in ``[-1, 1]``; ``x_t`` is
    ``(N, mask_channels, H, W)`` with ``N = B * S``; ``H`` and ``W`` are multiples of ``2 ** (depth - 1)``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.variant not in ("spinesegdiff", "spinesegdiff_no_ie", "diffunet2d"):
            raise ValueError(f"SpineSegDiffNet does not build variant {config.variant!r}")
        self.config = config
        widths = config.widths
        block = {
            "time_dim": config.time_embed_dim,
            "norm": config.norm,
            "negative_slope": config.negative_slope,
            "dropout": config.dropout,
        }
        self.time_embedding = TimestepEmbedding(config.time_embed_dim)
        self.image_encoder = ImageEncoder(config) if config.variant != "spinesegdiff_no_ie" else None
        self.pool = nn.MaxPool2d(2)
        patch = config.patch_size
        self.unshuffle = nn.PixelUnshuffle(patch) if patch > 1 else nn.Identity()
        self.shuffle = nn.PixelShuffle(patch) if patch > 1 else nn.Identity()
        in_channels = (config.image_channels + config.mask_channels) * patch**2
        self.down = nn.ModuleList(
            [ResidualBlock(in_channels, widths[0], **block)]
            + [ResidualBlock(widths[i - 1], widths[i], **block) for i in range(1, len(widths))]
        )
        # up[j] takes level i = depth - 1 - j up to level i - 1
        self.upsample = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2) for i in range(len(widths) - 1, 0, -1)]
        )
        self.up = nn.ModuleList(
            [ResidualBlock(2 * widths[i - 1], widths[i - 1], **block) for i in range(len(widths) - 1, 0, -1)]
        )
        self.head = nn.Conv2d(widths[0], config.mask_channels * patch**2, kernel_size=1)

    @property
    def has_image_encoder(self) -> bool:
        """Whether :meth:`encode_image` is available (variants ``spinesegdiff`` and ``diffunet2d``)."""
        return self.image_encoder is not None

    def _check_image(self, image: torch.Tensor) -> None:
        check_spatial_size(image, self.config.size_divisor, "image")
        if image.shape[1] != self.config.image_channels:
            raise ValueError(f"image must have {self.config.image_channels} channels, got {image.shape[1]}")

    def encode_image(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Run the image encoder once.

        Args:
            image: ``(B, image_channels, H, W)`` in ``[-1, 1]``.

        Returns:
            ``depth`` feature maps, level ``i`` of shape ``(B, widths[i], H / (p 2**i), W / (p 2**i))`` with
            ``p = config.patch_size``.
        """
        if self.image_encoder is None:
            raise RuntimeError(f"variant {self.config.variant!r} has no image encoder")
        self._check_image(image)
        return self.image_encoder(image)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        image: torch.Tensor,
        image_features: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Predict the clean mask from a noisy one.

        Args:
            x_t: ``(N, mask_channels, H, W)`` noisy mask (``[-1, 1]`` plus noise).
            t: ``(N,)`` integer timesteps in ``[0, T)``, or one timestep for the whole batch.
            image: ``(B, image_channels, H, W)`` with ``B == N`` or ``N == B * S``; in the latter case image
                ``b`` pairs with rows ``b * S .. b * S + S - 1`` of ``x_t`` (``repeat_interleave`` order).
            image_features: output of :meth:`encode_image` at batch ``B`` or ``N`` (broadcast inside, in the
                same sample-major order, without copying); computed from ``image`` when ``None`` and the
                network has an image encoder. Must be ``None`` for ``spinesegdiff_no_ie``.

        Returns:
            ``(N, mask_channels, H, W)`` logits; ``sigmoid`` gives the structure probabilities.
        """
        config = self.config
        check_spatial_size(x_t, config.size_divisor, "x_t")
        if x_t.shape[1] != config.mask_channels:
            raise ValueError(f"x_t must have {config.mask_channels} channels, got {x_t.shape[1]}")
        self._check_image(image)
        if image.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(
                f"image size {tuple(image.shape[-2:])} differs from x_t size {tuple(x_t.shape[-2:])}"
            )
        batch = x_t.shape[0]
        if image_features is None and self.image_encoder is not None:
            image_features = self.image_encoder(image)
        if image_features is not None:
            if self.image_encoder is None:
                raise ValueError(
                    f"variant {config.variant!r} has no image encoder: image_features must be None"
                )
            if len(image_features) != config.depth:
                raise ValueError(f"image_features must hold {config.depth} maps, got {len(image_features)}")

        temb = self.time_embedding(timestep_batch(t, batch, x_t.device))
        h = self.unshuffle(torch.cat([repeat_to_batch(image, batch, "image").to(x_t.dtype), x_t], dim=1))
        skips = []
        for index, level in enumerate(self.down):
            h = level(h if index == 0 else self.pool(h), temb)
            if image_features is not None:
                h = add_broadcast(h, image_features[index], f"image_features[{index}]")
            skips.append(h)
        h = skips.pop()
        for upsample, level in zip(self.upsample, self.up, strict=True):
            h = level(torch.cat([skips.pop(), upsample(h)], dim=1), temb)
        return self.shuffle(self.head(h))
