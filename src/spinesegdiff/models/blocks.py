"""Building blocks shared by the networks: timestep embeddings, normalisation, residual blocks, attention.

Every block works on ``(N, C, H, W)`` float tensors; ``temb`` is the ``(N, D)`` output of
:class:`TimestepEmbedding`. :func:`make_norm`, :class:`ConvNormAct` and :class:`ResidualBlock` also build the
volumetric versions (``dims=3``: ``(N, C, D, H, W)`` tensors, 3x3x3 convolutions) of Diff-UNet 3D; ``dims=2``,
the default, builds exactly the modules (and parameter names) of the 2D networks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of the (integer or real) timesteps.

    Args:
        timesteps: ``(N,)`` timesteps, typically integers in ``[0, T)``.
        dim: even number of features.
        max_period: longest wavelength.

    Returns:
        ``(N, dim)`` float32 tensor ``[cos(t * f_k), sin(t * f_k)]``, ``f_k = max_period ** (-k / (dim/2))``.
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    exponents = torch.arange(half, device=timesteps.device, dtype=torch.float32) / half
    frequencies = torch.exp(-math.log(max_period) * exponents)
    angles = timesteps.float()[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class TimestepEmbedding(nn.Module):
    """Sinusoidal features (``embed_dim // 4``) -> Linear -> SiLU -> Linear, giving ``(N, embed_dim)``."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.sinusoid_dim = embed_dim // 4
        self.mlp = nn.Sequential(
            nn.Linear(self.sinusoid_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``(N,)`` timesteps -> ``(N, embed_dim)``."""
        features = sinusoidal_embedding(timesteps, self.sinusoid_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


SPATIAL_DIMS: tuple[int, ...] = (2, 3)
"""Spatial dimensions the blocks can be built for: 2 (slices) and 3 (slabs)."""


def convolution_class(dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """``nn.Conv2d`` for ``dims=2``, ``nn.Conv3d`` for ``dims=3``."""
    if dims not in SPATIAL_DIMS:
        raise ValueError(f"dims must be one of {SPATIAL_DIMS}, got {dims!r}")
    return nn.Conv2d if dims == 2 else nn.Conv3d


def make_norm(kind: str, channels: int, *, dims: int = 2) -> nn.Module:
    """``"instance"``: affine instance norm (2D or 3D per ``dims``); ``"group"``: group norm with
    ``gcd(32, channels)`` groups."""
    if dims not in SPATIAL_DIMS:
        raise ValueError(f"dims must be one of {SPATIAL_DIMS}, got {dims!r}")
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True) if dims == 2 else nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"norm must be 'instance' or 'group', got {kind!r}")


class ConvNormAct(nn.Module):
    """3x3 (``dims=3``: 3x3x3) convolution -> norm -> LeakyReLU -> dropout (spatial size kept)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        norm: str,
        negative_slope: float,
        dropout: float,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.conv = convolution_class(dims)(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = make_norm(norm, out_channels, dims=dims)
        self.act = nn.LeakyReLU(negative_slope)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.norm(self.conv(x))))


class ResidualBlock(nn.Module):
    """Two :class:`ConvNormAct` with the timestep embedding added after the first, plus a shortcut.

    ``out = conv2(conv1(x) + Linear(SiLU(temb))) + shortcut(x)``, the shortcut a 1x1 convolution when the
    channel count changes. With ``time_dim=None`` the block has no time input (image encoder). ``dims``: 2 for
    ``(N, C, H, W)`` inputs, 3 for ``(N, C, D, H, W)`` (3x3x3 convolutions).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        time_dim: int | None,
        norm: str,
        negative_slope: float,
        dropout: float,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(
            in_channels, out_channels, norm=norm, negative_slope=negative_slope, dropout=0.0, dims=dims
        )
        self.time_proj = (
            None if time_dim is None else nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_channels))
        )
        self.conv2 = ConvNormAct(
            out_channels, out_channels, norm=norm, negative_slope=negative_slope, dropout=dropout, dims=dims
        )
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else convolution_class(dims)(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(x)
        if self.time_proj is not None:
            if temb is None:
                raise ValueError("this block needs a timestep embedding")
            shift = self.time_proj(temb)
            h = h + shift.view(*shift.shape, *(1,) * (h.ndim - 2))  # one value per sample and channel
        return self.conv2(h) + self.shortcut(x)


class GuidedResBlock(nn.Module):
    """Guided-diffusion residual block: norm-SiLU-conv + time, norm-SiLU-dropout-conv (zero init), skip."""

    def __init__(
        self, in_channels: int, out_channels: int, *, time_dim: int, norm: str, dropout: float
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            make_norm(norm, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_channels))
        out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(out_conv.weight)
        nn.init.zeros_(out_conv.bias)
        self.out_layers = nn.Sequential(
            make_norm(norm, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            out_conv,
        )
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.time_proj(temb)[:, :, None, None]
        return self.out_layers(h) + self.shortcut(x)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions, residual, zero-init output projection."""

    def __init__(self, channels: int, *, num_heads: int, norm: str) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = make_norm(norm, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (N, heads, HW, C / heads)
        attended = F.scaled_dot_product_attention(q, k, v)
        attended = attended.transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj(attended)


class Downsample(nn.Module):
    """Strided 3x3 convolution halving height and width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour doubling of height and width, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def check_spatial_size(tensor: torch.Tensor, divisor: int, name: str, *, dims: int = 2) -> None:
    """``ValueError`` unless ``tensor`` is ``(N, C, H, W)`` (``dims=3``: ``(N, C, D, H, W)``, any ``D``) with
    ``H`` and ``W`` multiples of ``divisor``."""
    if tensor.ndim != dims + 2:
        layout = "(N, C, H, W)" if dims == 2 else "(N, C, D, H, W)"
        raise ValueError(f"{name} must be {dims + 2}D {layout}, but it is {tensor.ndim}D")
    height, width = tensor.shape[-2:]
    if height % divisor or width % divisor:
        raise ValueError(
            f"{name} height and width must be divisible by {divisor} for this network depth, "
            f"got {height} x {width}"
        )


def timestep_batch(timesteps: torch.Tensor | int | float, batch: int, device: torch.device) -> torch.Tensor:
    """Timesteps as an ``(N,)`` tensor on ``device``; a scalar or 1-element tensor is repeated ``N`` times."""
    t = torch.as_tensor(timesteps, device=device)
    if t.numel() == 1:
        return t.reshape(1).expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"timesteps must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t


def repeat_to_batch(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Repeat each of the ``B`` items of ``tensor`` ``batch // B`` times in a row (``repeat_interleave``).

    Sample-major layout: row ``b * S + s`` of the result is item ``b``. ``ValueError`` unless ``B`` divides
    ``batch``.
    """
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 0 or batch % tensor.shape[0]:
        raise ValueError(
            f"{name} has batch {tensor.shape[0]}, which does not divide the sample batch {batch}"
        )
    return tensor.repeat_interleave(batch // tensor.shape[0], dim=0)


def add_broadcast(hidden: torch.Tensor, features: torch.Tensor, name: str) -> torch.Tensor:
    """``hidden + features`` where ``features`` has batch ``B`` and ``hidden`` batch ``B * S`` (sample-major).

    The sum broadcasts through a view, so the features are never copied ``S`` times.
    """
    if features.shape[1:] != hidden.shape[1:]:
        raise ValueError(
            f"{name} must have shape (*, {', '.join(map(str, hidden.shape[1:]))}), "
            f"got {tuple(features.shape)}"
        )
    batch, reference = hidden.shape[0], features.shape[0]
    if reference == batch:
        return hidden + features
    if reference == 0 or batch % reference:
        raise ValueError(f"{name} has batch {reference}, which does not divide the sample batch {batch}")
    grouped = hidden.reshape(reference, batch // reference, *hidden.shape[1:])
    return (grouped + features.unsqueeze(1)).reshape(hidden.shape)
