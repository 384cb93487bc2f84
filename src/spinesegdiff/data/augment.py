"""Batch augmentation for sagittal MRI slices, on tensors (CPU or GPU), driven by a ``torch.Generator``.

Thick slice (first, off unless ``p_thick_slice`` is set): a thin slice is averaged with its neighbours in the
same scan into a slice ``thick_slice_mm`` thick, like the 3-4 mm slices of 2D turbo spin-echo scans
(:func:`thick_slice`; the neighbours come from the slice cache, see :mod:`spinesegdiff.training.batches`).
Spatial: small rotation, scaling and translation, applied to image (bilinear) and labels (nearest) alike; no
flips (the model grid has a fixed anatomical orientation). Intensity: random gamma, random intensity remapping
(a random piecewise-linear curve that keeps air dark, sometimes non-monotone, which turns T2-like contrast into
T1-like contrast and back: our real data is T2 only), label-driven random contrast (every structure and
background tissue its own random intensity, off unless ``p_label_contrast`` is set), T1-weighted contrast
simulated from the labels (off unless ``p_t1_contrast`` is set, :func:`t1_contrast`), a smooth multiplicative
bias field. Acquisition (off unless ``p_low_resolution`` is set): a coarser in-plane acquisition simulated in
k-space, blurring with Gibbs ringing where the window is sharp (:func:`low_resolution`). Last, Gaussian noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (``enabled=False`` turns all off).

    ``p_thick_slice`` is the chance that a slice is replaced by a simulated thick slice: the average of the
    slices of its scan within a slab of thickness ``thick_slice_mm`` (mm, drawn uniformly from that
    ``(low, high)`` range, ``0 < low <= high``) centred on it, each weighted by its overlap with the slab
    (:func:`thick_slice_weights`). Its labels stay those of the centre slice. Off (0) by default.

    ``p_low_resolution`` is the chance that a slice is re-acquired more coarsely (:func:`low_resolution`): each
    in-plane axis gets a pixel size drawn from ``acquired_pixel_size`` (in pixels of the model grid, so 1-2.2 mm
    on the 1 mm grid; ``1 <= low <= high``) and the k-space window's cosine taper a share drawn from
    ``k_space_taper`` (``0 <= low <= high <= 1``; 0 is a hard cut, the most ringing). Off (0) by default.
    """

    enabled: bool = True
    rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.12)
    translation: float = 0.06
    p_spatial: float = 0.8
    p_gamma: float = 0.4
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_remap: float = 0.35
    remap_points: int = 6
    p_inversion: float = 0.2
    p_bias: float = 0.4
    bias_amplitude: float = 0.35
    p_noise: float = 0.3
    noise_std: float = 0.05
    p_label_contrast: float = 0.0
    contrast_clusters: int = 4
    contrast_blur_px: float = 1.5
    p_thick_slice: float = 0.0
    thick_slice_mm: tuple[float, float] = (2.0, 4.0)
    p_low_resolution: float = 0.0
    p_t1_contrast: float = 0.0
    acquired_pixel_size: tuple[float, float] = (1.0, 2.2)
    k_space_taper: tuple[float, float] = (0.0, 0.5)

    def __post_init__(self) -> None:
        for name in ("p_spatial", "p_gamma", "p_remap", "p_inversion", "p_bias", "p_noise", "p_label_contrast",
                     "p_thick_slice", "p_low_resolution", "p_t1_contrast"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        object.__setattr__(self, "scale_range", tuple(self.scale_range))
        object.__setattr__(self, "gamma_range", tuple(self.gamma_range))
        _check_range(self, "thick_slice_mm", 0.0, math.inf, above_lowest=True)
        _check_range(self, "acquired_pixel_size", 1.0, math.inf)
        _check_range(self, "k_space_taper", 0.0, 1.0)


def _check_range(config: AugmentConfig, name: str, lowest: float, highest: float, *,
                 above_lowest: bool = False) -> None:
    """Store the field ``name`` as a tuple and check it is a finite ``(low, high)`` with
    ``lowest <= low <= high <= highest`` (``lowest < low`` with ``above_lowest``)."""
    value = tuple(getattr(config, name))
    object.__setattr__(config, name, value)
    low_ok = len(value) == 2 and (value[0] > lowest if above_lowest else value[0] >= lowest)
    if not low_ok or not all(math.isfinite(v) for v in value) or not value[0] <= value[1] <= highest:
        bound = f"{lowest} {'<' if above_lowest else '<='} low <= high <= {highest}"
        raise ValueError(f"{name} must be finite (low, high) with {bound}, got {value}")


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low


def _chance(batch: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(batch, generator=generator, device=device) < p


def thick_slice_weights(thickness_mm: torch.Tensor, spacing_mm: torch.Tensor, reach: torch.Tensor,
                        radius: int) -> torch.Tensor:
    """Weights of the slices at offsets ``-radius..radius`` in a slab ``thickness_mm`` thick centred on slice 0.

    Slice ``k`` covers ``[(k - 1/2) s, (k + 1/2) s]`` (``s = spacing_mm``); its weight is its overlap with the
    slab ``[-h, h]``, normalised to sum 1. The half-thickness ``h = min(thickness / 2, (reach + 1/2) s)`` is
    narrowed symmetrically to the ``reach`` slices there are on both sides, so the slab stays centred on the
    labelled slice; with ``reach`` 0, or a slab thinner than ``s``, slice 0 weighs 1 and every other 0.

    Args:
        thickness_mm: ``(B,)`` positive slab thicknesses.
        spacing_mm: ``(B,)`` positive distances between adjacent slices.
        reach: ``(B,)`` integers in ``0..radius``: how many neighbours there are on both sides.
        radius: the neighbours on each side that the weights are for.

    Returns:
        ``(B, 2 * radius + 1)`` float in [0, 1], rows summing to 1; column ``radius + k`` weighs offset ``k``.
    """
    spacing = spacing_mm.to(torch.float32)[:, None]
    offsets = torch.arange(-radius, radius + 1, device=spacing.device, dtype=torch.float32)[None, :]
    half = torch.minimum(thickness_mm.to(torch.float32) / 2, (reach.to(torch.float32) + 0.5) * spacing[:, 0])
    low, high = (offsets - 0.5) * spacing, (offsets + 0.5) * spacing
    overlap = (torch.minimum(high, half[:, None]) - torch.maximum(low, -half[:, None])).clamp(min=0)
    return overlap / overlap.sum(dim=1, keepdim=True)


def thick_slice(stack: torch.Tensor, spacing_mm: torch.Tensor, reach: torch.Tensor, config: AugmentConfig,
                generator: torch.Generator) -> torch.Tensor:
    """Simulate thick slices: with chance ``p_thick_slice`` each centre slice becomes the weighted average of its
    neighbours within a slab of a random thickness in ``thick_slice_mm`` (:func:`thick_slice_weights`).

    Slices without neighbours on both sides (``reach`` 0) stay as they are; draws two numbers per slice from
    ``generator`` whatever ``reach`` says.

    Args:
        stack: ``(B, 2 R + 1, H, W)`` in [0, 1]: each slice's neighbours at offsets ``-R..R``, itself at ``R``
            (offsets beyond ``reach`` weigh 0: they may hold any finite value, and any value at all where
            ``reach`` is 0, as such a slice is returned exactly as it is).
        spacing_mm: ``(B,)`` distances between adjacent slices of each slice's scan.
        reach: ``(B,)`` integers in ``0..R``: the neighbours ``stack`` holds on both sides.
        config: ``p_thick_slice`` and ``thick_slice_mm``.
        generator: a generator on the tensors' device.

    Returns:
        ``(B, 1, H, W)`` in [0, 1].
    """
    batch, device = stack.shape[0], stack.device
    radius = stack.shape[1] // 2
    thickness = _uniform((batch,), *config.thick_slice_mm, generator, device)
    chosen = _chance(batch, config.p_thick_slice, generator, device) & (reach.to(device) > 0)
    weights = thick_slice_weights(thickness, spacing_mm.to(device), reach.to(device), radius).to(stack.dtype)
    averaged = torch.einsum("bk,bkhw->bhw", weights, stack)[:, None].clamp(0, 1)
    return torch.where(chosen[:, None, None, None], averaged, stack[:, radius:radius + 1])


def spatial_transform(image: torch.Tensor, labels: torch.Tensor, config: AugmentConfig,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random similarity transform of ``image`` ``(B, 1, H, W)`` in [0, 1] and ``labels`` ``(B, H, W)`` int."""
    batch, device = image.shape[0], image.device
    angle = _uniform((batch,), -1, 1, generator, device) * math.radians(config.rotation_deg)
    scale = _uniform((batch,), *config.scale_range, generator, device)
    shift = _uniform((batch, 2), -config.translation, config.translation, generator, device) * 2
    apply = _chance(batch, config.p_spatial, generator, device)
    angle, scale = torch.where(apply, angle, 0.0), torch.where(apply, scale, 1.0)
    shift = torch.where(apply[:, None], shift, 0.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(image.dtype), list(image.shape), align_corners=False)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped_labels = F.grid_sample(labels[:, None].to(image.dtype), grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False)
    return warped, warped_labels[:, 0].round().to(labels.dtype)


def random_remap(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Pass intensities in [0, 1] through a random piecewise-linear curve with ``f(0) = 0`` (air stays dark)."""
    batch, device = image.shape[0], image.device
    points = config.remap_points
    knots = torch.rand((batch, points), generator=generator, device=device)
    knots[:, 0] = 0.0
    monotone = _chance(batch, 0.5, generator, device)
    knots = torch.where(monotone[:, None], torch.sort(knots, dim=1).values, knots)
    position = image.clamp(0, 1) * (points - 1)
    low = position.floor().long().clamp(max=points - 2)
    frac = position - low
    flat_low = low.view(batch, -1)
    left = torch.gather(knots, 1, flat_low).view_as(image)
    right = torch.gather(knots, 1, flat_low + 1).view_as(image)
    return left + frac * (right - left)


def invert_contrast(image: torch.Tensor, threshold: float = 0.08) -> torch.Tensor:
    """``1 - x`` on tissue, air (below ``threshold``) kept dark: a crude T2 <-> T1 swap of fluid and fat."""
    return torch.where(image > threshold, 1.0 - image + threshold, image)


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` maps (``sigma`` in pixels; 0 returns them as they are)."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = maps.shape[1]
    rows = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    cols = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    maps = F.conv2d(F.pad(maps, (0, 0, radius, radius), mode="replicate"), rows, groups=channels)
    return F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="replicate"), cols, groups=channels)


def label_contrast(image: torch.Tensor, labels: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                   air: float = 0.08) -> torch.Tensor:
    """Give every structure and every background tissue its own random contrast (in the spirit of SynthSeg).

    The regions are the label classes 1-3 and ``contrast_clusters`` pseudo-labels of the background (its
    tissue split at intensity quantiles); air (below ``air``) stays as it is. Each region ``r`` gets a random
    mean ``m_r`` in [0.05, 1] and a random texture gain ``s_r`` in [0.5, 1.5]: ``x -> m_r + s_r (x - mean_r)``,
    blended across region borders with weights blurred by ``contrast_blur_px`` pixels. So a T2 canal (bright)
    can come out dark, a disc bright or dark, fat bright or grey: contrasts the real (T2-only) data never show.

    Args:
        image: ``(B, 1, H, W)`` in [0, 1].
        labels: ``(B, H, W)`` classes 0-3.

    Returns:
        ``(B, 1, H, W)`` in [0, 1].
    """
    batch, device = image.shape[0], image.device
    clusters = max(1, config.contrast_clusters)
    tissue = (labels == 0) & (image[:, 0] > air)
    quantiles = torch.linspace(0, 1, clusters + 1, device=device)[1:-1]
    bins = torch.zeros_like(labels)
    for b in range(batch):
        values = image[b, 0][tissue[b]]
        if values.numel() and clusters > 1:
            edges = torch.quantile(values[:: max(1, values.numel() // 20000)], quantiles)
            bins[b] = torch.bucketize(image[b, 0], edges)
    regions = torch.where(labels > 0, clusters + labels - 1, bins)  # 0..clusters-1 background, then SC VB IVD
    regions = torch.where((labels == 0) & ~tissue, clusters + 3, regions)  # air: its own region, unchanged
    onehot = F.one_hot(regions.long(), clusters + 4).permute(0, 3, 1, 2).to(image.dtype)
    new_means = _uniform((batch, clusters + 4), 0.05, 1.0, generator, device)
    gains = _uniform((batch, clusters + 4), 0.5, 1.5, generator, device)
    keep = torch.zeros(clusters + 4, dtype=torch.bool, device=device)
    keep[-1] = True  # air unchanged
    return _recolour(image, onehot, new_means, gains, keep, config.contrast_blur_px)


def _recolour(image: torch.Tensor, onehot: torch.Tensor, new_means: torch.Tensor, gains: torch.Tensor,
              keep: torch.Tensor, blur_px: float) -> torch.Tensor:
    """Map each region ``r`` of ``onehot`` (``(B, R, H, W)``) by ``x -> new_means[:, r] + gains[:, r] (x - mean_r)``
    (``mean_r`` its mean intensity), regions where ``keep`` (``(R,)`` bool) as they are, blended across region
    borders with weights blurred by ``blur_px`` pixels; ``image`` ``(B, 1, H, W)`` in [0, 1] -> the same."""
    area = onehot.sum(dim=(2, 3)).clamp(min=1)
    means = (onehot * image).sum(dim=(2, 3)) / area  # (B, R)
    new_means = torch.where(keep[None], means, new_means)
    gains = torch.where(keep[None], torch.ones_like(gains), gains)
    weights = _gaussian_blur(onehot, blur_px)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-6)
    mapped = new_means[:, :, None, None] + gains[:, :, None, None] * (image - means[:, :, None, None])
    return (weights * mapped).sum(dim=1, keepdim=True).clamp(0, 1)


T1_MEANS = {"canal": (0.05, 0.25), "vertebra": (0.55, 0.9), "disc": (0.2, 0.45)}
"""Ranges of the mean intensity (in [0, 1]) each labelled structure takes in :func:`t1_contrast`: on T1-weighted
spin-echo images CSF is dark, fatty vertebral marrow bright and discs intermediate to dark, while fat and muscle
keep roughly their T2 turbo spin-echo brightness (fat bright, muscle dark)."""
T1_GAINS = {"canal": (0.3, 0.8), "vertebra": (0.5, 1.0), "disc": (0.3, 0.7)}
"""Ranges of the texture gain of each structure in :func:`t1_contrast` (the disc's nucleus and annulus differ
less on T1 than on T2)."""


def t1_contrast(image: torch.Tensor, labels: torch.Tensor, config: AugmentConfig,
                generator: torch.Generator) -> torch.Tensor:
    """Give a T2-weighted slice the contrast of a T1-weighted one, structure by structure, keeping each tissue's
    texture up to a gain: the canal dark, the vertebrae bright, the discs intermediate, the background (fat,
    muscle, air) as it is (:data:`T1_MEANS`, :data:`T1_GAINS`). The label-driven contrast draws T1's tissue order
    only rarely among all random orders; this draws it every time.

    Args:
        image: ``(B, 1, H, W)`` in [0, 1].
        labels: ``(B, H, W)`` classes 0-3.
        config: ``contrast_blur_px``.
        generator: drives the draws.

    Returns:
        ``(B, 1, H, W)`` in [0, 1].
    """
    batch, device = image.shape[0], image.device
    onehot = F.one_hot(labels.long(), 4).permute(0, 3, 1, 2).to(image.dtype)  # background, SC, VB, IVD

    def per_region(ranges: dict[str, tuple[float, float]], background: float) -> torch.Tensor:
        """``(B, 4)`` draws, uniform in each structure's range; the background's value is ``background``."""
        low = torch.tensor([background, *(ranges[s][0] for s in ("canal", "vertebra", "disc"))], device=device)
        high = torch.tensor([background, *(ranges[s][1] for s in ("canal", "vertebra", "disc"))], device=device)
        return low + (high - low) * torch.rand((batch, 4), generator=generator, device=device)

    new_means, gains = per_region(T1_MEANS, 0.0), per_region(T1_GAINS, 1.0)
    keep = torch.tensor([True, False, False, False], device=device)
    return _recolour(image, onehot, new_means, gains, keep, config.contrast_blur_px)


def k_space_window(size: int, kept: torch.Tensor, taper: torch.Tensor) -> torch.Tensor:
    """Weights of the FFT frequencies of one axis for a coarser acquisition.

    Args:
        size: samples along the axis.
        kept: ``(B,)`` share of the frequencies up to Nyquist that the coarser acquisition holds, in (0, 1]
            (one over its pixel size in grid pixels).
        taper: ``(B,)`` share of the kept band, at its outer end, over which the window rolls off to 0 with a
            half cosine, in [0, 1]; 0 is a hard cut (a plain truncation: sinc blur with Gibbs ringing).

    Returns:
        ``(B, size)`` weights in [0, 1] in :func:`torch.fft.fftfreq` order (0 Hz first), 1 at 0 Hz.
    """
    frequency = torch.fft.fftfreq(size, device=kept.device).abs()[None] * 2.0  # 0 at DC, 1 at Nyquist
    edge = kept[:, None]
    start = edge * (1.0 - taper[:, None])
    ramp = ((frequency - start) / (edge - start).clamp(min=1e-6)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * ramp)) * (frequency <= edge)


def low_resolution(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Simulate a coarser in-plane acquisition: keep the central part of k-space only.

    Each axis gets its own pixel size from ``config.acquired_pixel_size`` (2D spin-echo series are often
    coarser in the phase direction), the window's taper from ``config.k_space_taper``; the filtered image's
    magnitude is returned, as a scanner reconstructs it, so a hard cut leaves bright and dark rings beside strong
    edges (CSF against cord and bone) as on real scans.

    Args:
        image: ``(B, C, H, W)`` in [0, 1] (every channel of a sample gets the same acquisition).
        config: ``acquired_pixel_size`` and ``k_space_taper``.
        generator: drives the draws.

    Returns:
        ``(B, C, H, W)`` in [0, 1].
    """
    batch, device = image.shape[0], image.device
    pixel_size = _uniform((batch, 2), *config.acquired_pixel_size, generator, device)
    taper = _uniform((batch,), *config.k_space_taper, generator, device)
    rows = k_space_window(image.shape[-2], 1.0 / pixel_size[:, 0], taper)
    cols = k_space_window(image.shape[-1], 1.0 / pixel_size[:, 1], taper)
    spectrum = torch.fft.fft2(image.float())
    filtered = torch.fft.ifft2(spectrum * (rows[:, None, :, None] * cols[:, None, None, :]))
    return filtered.abs().clamp(0.0, 1.0).to(image.dtype)


def bias_field(shape: tuple[int, ...], amplitude: float, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """Smooth multiplicative field ``exp(a * quadratic polynomial)`` of shape ``(B, 1, H, W)``, mean about 1."""
    batch, _, height, width = shape
    y = torch.linspace(-1, 1, height, device=device)[:, None]
    x = torch.linspace(-1, 1, width, device=device)[None, :]
    terms = (x, y, x * y, x**2 - 1 / 3, y**2 - 1 / 3)
    basis = torch.stack([term.expand(height, width) for term in terms])
    coefficients = _uniform((batch, basis.shape[0]), -1, 1, generator, device)
    return torch.exp(amplitude * torch.einsum("bk,khw->bhw", coefficients, basis))[:, None]


def augment_batch(image: torch.Tensor, labels: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch.

    Args:
        image: ``(B, 1, H, W)`` float in [0, 1].
        labels: ``(B, H, W)`` integer classes.
        config: what to apply.
        generator: a generator on the tensors' device; the same state gives the same batch.

    Returns:
        ``(image in [0, 1], labels)`` of the same shapes and dtypes.
    """
    if not config.enabled:
        return image, labels
    batch, device = image.shape[0], image.device
    image, labels = spatial_transform(image, labels, config, generator)
    if config.p_label_contrast > 0:  # drawn only when asked for: runs without it keep their random stream
        recoloured = label_contrast(image, labels, config, generator)
        chosen = _chance(batch, config.p_label_contrast, generator, device)[:, None, None, None]
        image = torch.where(chosen, recoloured, image)
    if config.p_t1_contrast > 0:  # drawn only when asked for, as the label contrast
        recoloured = t1_contrast(image, labels, config, generator)
        chosen = _chance(batch, config.p_t1_contrast, generator, device)[:, None, None, None]
        image = torch.where(chosen, recoloured, image)
    gamma = _uniform((batch, 1, 1, 1), *config.gamma_range, generator, device)
    gamma = torch.where(_chance(batch, config.p_gamma, generator, device)[:, None, None, None], gamma, 1.0)
    image = image.clamp(0, 1) ** gamma
    remapped = random_remap(image, config, generator)
    image = torch.where(_chance(batch, config.p_remap, generator, device)[:, None, None, None], remapped, image)
    inverted = invert_contrast(image)
    image = torch.where(_chance(batch, config.p_inversion, generator, device)[:, None, None, None], inverted, image)
    field = bias_field(tuple(image.shape), config.bias_amplitude, generator, device)
    image = torch.where(_chance(batch, config.p_bias, generator, device)[:, None, None, None], image * field, image)
    if config.p_low_resolution > 0:  # drawn only when asked for, as the label contrast
        coarser = low_resolution(image.clamp(0, 1), config, generator)
        chosen = _chance(batch, config.p_low_resolution, generator, device)[:, None, None, None]
        image = torch.where(chosen, coarser, image)
    noise = torch.randn(image.shape, generator=generator, device=device) * config.noise_std
    image = torch.where(_chance(batch, config.p_noise, generator, device)[:, None, None, None], image + noise, image)
    return image.clamp(0, 1), labels
