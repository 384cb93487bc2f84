"""Diff-UNet 3D: the SpineSegDiff dual-encoder network with 3D convolutions, for sagittal slabs.

The design and the call contract of :class:`~spinesegdiff.models.spinesegdiff_net.SpineSegDiffNet`, on slabs
``(B, C, D, H, W)`` of ``D`` sagittal slices (9 at 1 mm for the SPIDER T2 SPACE slabs, see
:mod:`spinesegdiff.data.slabs`) instead of single slices:

* a denoising U-Net on ``concat(y, x_t)`` and an image encoder (IE) on ``y`` alone, the IE's features ADDED to
  the denoiser's at every level; the output is mask LOGITS, ``x0 = 2 * sigmoid(logits) - 1``;
* every level is a :class:`~spinesegdiff.models.blocks.ResidualBlock` with 3x3x3 convolutions (padding 1);
* depth is handled explicitly: levels are linked by ``(1, 2, 2)`` max pooling and ``(1, 2, 2)`` transposed
  convolutions, in-plane only, so every level keeps all ``D`` slices and any ``D`` works (odd ones too);
* with ``patch_size`` ``p > 1`` each slice's ``p x p`` patches are folded into channels first (the 2D
  ``PixelUnshuffle`` applied slice by slice) and the output is unfolded back, as in the 2D compact preset.
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
from spinesegdiff.models.config import SLAB_VARIANTS, ModelConfig
from spinesegdiff.models.spinesegdiff_net import ImageEncoder

IN_PLANE = (1, 2, 2)
"""Pooling and upsampling factor per axis ``(D, H, W)``: the slices are never merged."""


class PerSlice(nn.Module):
    """Apply a 2D module to every slice of a slab: ``(B, C, D, H, W)`` -> ``(B, C', D, H', W')``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, depth = x.shape[0], x.shape[2]
        out = self.module(x.transpose(1, 2).flatten(0, 1))  # (B * D, C, H, W)
        return out.unflatten(0, (batch, depth)).transpose(1, 2)


def _in_plane_patches(patch: int, *, fold: bool) -> nn.Module:
    """``p x p`` in-plane patches into channels (``fold``) or back, slice by slice; identity for ``p = 1``."""
    if patch == 1:
        return nn.Identity()
    return PerSlice(nn.PixelUnshuffle(patch) if fold else nn.PixelShuffle(patch))


class SpineSegDiffNet3d(nn.Module):
    """Dual-encoder denoising U-Net on slabs; predicts ``x0`` as logits (variant ``diffunet3d``).

    Args:
        config: a :class:`ModelConfig` with a slab variant (:data:`~spinesegdiff.models.config.SLAB_VARIANTS`).

    Shapes: image ``y`` is ``(B, image_channels, D, H, W)`` in ``[-1, 1]``; ``x_t`` is
    ``(N, mask_channels, D, H, W)`` with ``N = B`` or ``N = B * S``; ``H`` and ``W`` are multiples of
    ``config.size_divisor``, ``D`` is free.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.variant not in SLAB_VARIANTS:
            raise ValueError(f"SpineSegDiffNet3d does not build variant {config.variant!r}")
        self.config = config
        widths = config.widths
        block = {"time_dim": config.time_embed_dim, "norm": config.norm, "negative_slope": config.negative_slope,
                 "dropout": config.dropout, "dims": 3}
        patch = config.patch_size
        self.time_embedding = TimestepEmbedding(config.time_embed_dim)
        self.image_encoder = ImageEncoder(config, dims=3, pool=nn.MaxPool3d(IN_PLANE),
                                          unshuffle=_in_plane_patches(patch, fold=True))
        self.pool = nn.MaxPool3d(IN_PLANE)
        self.unshuffle = _in_plane_patches(patch, fold=True)
        self.shuffle = _in_plane_patches(patch, fold=False)
        in_channels = (config.image_channels + config.mask_channels) * patch**2
        self.down = nn.ModuleList(
            [ResidualBlock(in_channels, widths[0], **block)]
            + [ResidualBlock(widths[i - 1], widths[i], **block) for i in range(1, len(widths))]
        )
        # upsample[j] and up[j] take level i = depth - 1 - j up to level i - 1
        self.upsample = nn.ModuleList(
            [nn.ConvTranspose3d(widths[i], widths[i - 1], IN_PLANE, stride=IN_PLANE)
             for i in range(len(widths) - 1, 0, -1)]
        )
        self.up = nn.ModuleList(
            [ResidualBlock(2 * widths[i - 1], widths[i - 1], **block) for i in range(len(widths) - 1, 0, -1)]
        )
        self.head = nn.Conv3d(widths[0], config.mask_channels * patch**2, kernel_size=1)

    @property
    def has_image_encoder(self) -> bool:
        """Always ``True``: :meth:`encode_image` is available."""
        return True

    def _check_image(self, image: torch.Tensor) -> None:
        check_spatial_size(image, self.config.size_divisor, "image", dims=3)
        if image.shape[1] != self.config.image_channels:
            raise ValueError(f"image must have {self.config.image_channels} channels, got {image.shape[1]}")

    def encode_image(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Run the image encoder once.

        Args:
            image: ``(B, image_channels, D, H, W)`` in ``[-1, 1]``.

        Returns:
            ``depth`` feature maps, level ``i`` of shape ``(B, widths[i], D, H / (p 2**i), W / (p 2**i))``
            with ``p = config.patch_size``.
        """
        self._check_image(image)
        return self.image_encoder(image)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        image: torch.Tensor,
        image_features: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Predict the clean mask slab from a noisy one.

        Args:
            x_t: ``(N, mask_channels, D, H, W)`` noisy mask (``[-1, 1]`` plus noise).
            t: ``(N,)`` integer timesteps in ``[0, T)``, or one timestep for the whole batch.
            image: ``(B, image_channels, D, H, W)`` with ``N == B`` or ``N == B * S`` (image ``b`` pairs with
                rows ``b * S .. b * S + S - 1`` of ``x_t``).
            image_features: output of :meth:`encode_image` at batch ``B`` or ``N``; computed from ``image``
                when ``None``.

        Returns:
            ``(N, mask_channels, D, H, W)`` logits; ``sigmoid`` gives the structure probabilities.
        """
        config = self.config
        check_spatial_size(x_t, config.size_divisor, "x_t", dims=3)
        if x_t.shape[1] != config.mask_channels:
            raise ValueError(f"x_t must have {config.mask_channels} channels, got {x_t.shape[1]}")
        self._check_image(image)
        if image.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"image size {tuple(image.shape[2:])} differs from x_t size {tuple(x_t.shape[2:])}")
        if image_features is None:
            image_features = self.image_encoder(image)
        if len(image_features) != config.depth:
            raise ValueError(f"image_features must hold {config.depth} maps, got {len(image_features)}")

        batch = x_t.shape[0]
        temb = self.time_embedding(timestep_batch(t, batch, x_t.device))
        h = self.unshuffle(torch.cat([repeat_to_batch(image, batch, "image").to(x_t.dtype), x_t], dim=1))
        skips = []
        for index, level in enumerate(self.down):
            h = level(h if index == 0 else self.pool(h), temb)
            h = add_broadcast(h, image_features[index], f"image_features[{index}]")
            skips.append(h)
        h = skips.pop()
        for upsample, level in zip(self.upsample, self.up, strict=True):
            h = level(torch.cat([skips.pop(), upsample(h)], dim=1), temb)
        return self.shuffle(self.head(h))
