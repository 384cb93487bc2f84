"""IISDM baseline network (Wolleb et al., 2022): a guided-diffusion-style U-Net that predicts the noise.

Input ``concat(y, x_t)``; output ``eps_hat`` with ``mask_channels`` channels. Level ``i`` works at
``1 / 2**i`` resolution with ``widths[i]`` channels (``model_channels * channel_mult[i]``) and
``num_res_blocks`` :class:`~spinesegdiff.models.blocks.GuidedResBlock` (group norm, SiLU, timestep embedding
added after the first conv), self-attention at ``attention_levels``; strided-conv downsampling,
nearest-neighbour + conv upsampling, a middle block (res, attention, res), and skip concatenation after every
block as in guided diffusion. The output convolution is zero-initialised, so a fresh network predicts 0.

With ``noise_skip`` the input ``x_t`` also reaches the output through a 1 x 1 convolution initialised to the
identity (a fresh network then predicts ``eps_hat = x_t``, i.e. ``x0_hat = 0`` at every step). At high noise
``eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)`` is ``x_t`` up to a term of size ``sqrt(SNR)``, and without the
skip that small term, the only place the image matters there, is lost in the error of carrying white noise
pixel for pixel through the whole U-Net and its 2 x 2 stem: the fold-0 runs without it never used the image
and their samples from noise stayed at ``x0_hat = 0`` (chance Dice); with it the one-call ``x0`` improves at
high noise, but reading the image takes far longer training (``benchmarks/x0_by_timestep.py --image-use``,
docs/RESULTS.md).
"""

from __future__ import annotations

import torch
from torch import nn

from spinesegdiff.models.blocks import (
    Downsample,
    GuidedResBlock,
    SelfAttention2d,
    TimestepEmbedding,
    Upsample,
    check_spatial_size,
    make_norm,
    repeat_to_batch,
    timestep_batch,
)
from spinesegdiff.models.config import ModelConfig


class _Stage(nn.Module):
    """An optional residual block, then optional self-attention, then optional resampling."""

    def __init__(
        self, block: GuidedResBlock | None, attention: SelfAttention2d | None, resample: nn.Module | None
    ) -> None:
        super().__init__()
        self.block = block
        self.attention = attention
        self.resample = resample

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = x if self.block is None else self.block(x, temb)
        if self.attention is not None:
            h = self.attention(h)
        if self.resample is not None:
            h = self.resample(h)
        return h


class IISDMNet(nn.Module):
    """Noise-predicting U-Net on ``concat(y, x_t)``.

    Args:
        config: a :class:`ModelConfig` with variant ``iisdm``.

    Shapes: image ``(B, image_channels, H, W)`` in ``[-1, 1]``; ``x_t`` ``(N, mask_channels, H, W)`` with
    ``N = B`` or ``N = B * S`` (sample-major); ``H`` and ``W`` multiples of ``2 ** (depth - 1)``.
    """

    has_image_encoder = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.variant != "iisdm":
            raise ValueError(f"IISDMNet builds variant 'iisdm', got {config.variant!r}")
        self.config = config
        widths, tdim, norm = config.widths, config.time_embed_dim, config.norm

        def res(cin: int, cout: int) -> GuidedResBlock:
            return GuidedResBlock(cin, cout, time_dim=tdim, norm=norm, dropout=config.dropout)

        def attn(channels: int, level: int) -> SelfAttention2d | None:
            if level not in config.attention_levels:
                return None
            return SelfAttention2d(channels, num_heads=config.num_heads, norm=norm)

        self.time_embedding = TimestepEmbedding(tdim)
        patch = config.patch_size
        self.unshuffle = nn.PixelUnshuffle(patch) if patch > 1 else nn.Identity()
        self.shuffle = nn.PixelShuffle(patch) if patch > 1 else nn.Identity()
        self.input_conv = nn.Conv2d((config.image_channels + config.mask_channels) * patch**2, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [widths[0]]
        channels = widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                self.down.append(_Stage(res(channels, width), attn(width, level), None))
                channels = width
                skip_channels.append(channels)
            if level < len(widths) - 1:
                self.down.append(_Stage(None, None, Downsample(channels)))
                skip_channels.append(channels)
        self.middle = nn.ModuleList(
            [
                _Stage(
                    res(channels, channels),
                    SelfAttention2d(channels, num_heads=config.num_heads, norm=norm),
                    None,
                ),
                _Stage(res(channels, channels), None, None),
            ]
        )
        self.up = nn.ModuleList()
        for level in range(len(widths) - 1, -1, -1):
            width = widths[level]
            for index in range(config.num_res_blocks + 1):
                resample = Upsample(width) if level > 0 and index == config.num_res_blocks else None
                self.up.append(
                    _Stage(res(channels + skip_channels.pop(), width), attn(width, level), resample)
                )
                channels = width
        self.out = nn.Sequential(
            make_norm(norm, channels), nn.SiLU(), nn.Conv2d(channels, config.mask_channels * patch**2, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)
        self.noise_skip: nn.Conv2d | None = None
        if config.noise_skip:
            self.noise_skip = nn.Conv2d(config.mask_channels, config.mask_channels, 1)
            with torch.no_grad():
                self.noise_skip.weight.copy_(torch.eye(config.mask_channels)[:, :, None, None])
                nn.init.zeros_(self.noise_skip.bias)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        image: torch.Tensor,
        image_features: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Predict the noise in ``x_t``.

        Args:
            x_t: ``(N, mask_channels, H, W)`` noisy mask.
            t: ``(N,)`` integer timesteps in ``[0, T)``, or one for the whole batch.
            image: ``(B, image_channels, H, W)``, ``B == N`` or ``N == B * S`` (repeated sample-major inside).
            image_features: must be ``None`` (IISDM has no image encoder; the argument keeps the call
                signature of :class:`~spinesegdiff.models.SpineSegDiffNet`).

        Returns:
            ``(N, mask_channels, H, W)`` predicted noise ``eps_hat`` (unbounded, about standard normal).
        """
        config = self.config
        if image_features is not None:
            raise ValueError("IISDM has no image encoder: image_features must be None")
        check_spatial_size(x_t, config.size_divisor, "x_t")
        check_spatial_size(image, config.size_divisor, "image")
        if x_t.shape[1] != config.mask_channels or image.shape[1] != config.image_channels:
            raise ValueError(
                f"expected x_t with {config.mask_channels} and image with {config.image_channels} channels, "
                f"got {x_t.shape[1]} and {image.shape[1]}"
            )
        if image.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(
                f"image size {tuple(image.shape[-2:])} differs from x_t size {tuple(x_t.shape[-2:])}"
            )
        batch = x_t.shape[0]
        temb = self.time_embedding(timestep_batch(t, batch, x_t.device))
        h = torch.cat([repeat_to_batch(image, batch, "image").to(x_t.dtype), x_t], dim=1)
        h = self.input_conv(self.unshuffle(h))
        skips = [h]
        for stage in self.down:
            h = stage(h, temb)
            skips.append(h)
        for stage in self.middle:
            h = stage(h, temb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), temb)
        eps = self.shuffle(self.out(h))
        return eps if self.noise_skip is None else eps + self.noise_skip(x_t)
