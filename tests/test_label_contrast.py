"""Label-driven random contrast (issue 13): each structure and background tissue its own random intensity."""

from __future__ import annotations

import torch

from spinesegdiff.data.augment import AugmentConfig, augment_batch, label_contrast


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A T2-like slice: bright canal (0.9), dark bodies (0.3), grey discs (0.6), fat (0.5), air (0)."""
    labels = torch.zeros((2, 64, 64), dtype=torch.long)
    image = torch.zeros((2, 1, 64, 64))
    image[:, :, :, 8:] = 0.5
    labels[:, 10:50, 20:30] = 2
    labels[:, 28:32, 20:30] = 3
    labels[:, 10:50, 30:36] = 1
    for value, intensity in ((1, 0.9), (2, 0.3), (3, 0.6)):
        image[:, 0][labels == value] = intensity
    image = image + 0.02 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    return image.clamp(0, 1), labels


def _mean(image: torch.Tensor, labels: torch.Tensor, value: int, b: int) -> float:
    return float(image[b, 0][labels[b] == value].mean())


def test_structures_get_new_contrasts_and_air_stays_dark() -> None:
    image, labels = _batch()
    config = AugmentConfig(p_label_contrast=1.0, contrast_blur_px=0.0)
    orders = set()
    for seed in range(12):
        out = label_contrast(image, labels, config, torch.Generator().manual_seed(seed))
        assert out.shape == image.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        air = image < 0.08
        assert air[:, :, :, :8].float().mean() > 0.9 and torch.allclose(out[air], image[air], atol=1e-6), "air stays"
        orders.add(_mean(out, labels, 1, 0) > _mean(out, labels, 2, 0))
    assert orders == {True, False}, "the canal comes out brighter than the bodies in some draws, darker in others"


def test_texture_inside_a_region_is_kept_up_to_a_gain() -> None:
    image, labels = _batch()
    out = label_contrast(image, labels, AugmentConfig(contrast_blur_px=0.0), torch.Generator().manual_seed(3))
    inside = (labels[0] == 2) & (image[0, 0] > 0.05) & (out[0, 0] > 0.01) & (out[0, 0] < 0.99)
    x, y = image[0, 0][inside], out[0, 0][inside]
    correlation = torch.corrcoef(torch.stack([x, y]))[0, 1]
    assert correlation > 0.99, "an affine map of the original intensities within a region"


def test_off_by_default_and_reproducible_when_on() -> None:
    image, labels = _batch()
    plain, _ = augment_batch(image, labels, AugmentConfig(), torch.Generator().manual_seed(0))
    again, _ = augment_batch(image, labels, AugmentConfig(p_label_contrast=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(plain, again)
    config = AugmentConfig(p_label_contrast=1.0)
    first, _ = augment_batch(image, labels, config, torch.Generator().manual_seed(0))
    second, _ = augment_batch(image, labels, config, torch.Generator().manual_seed(0))
    assert torch.equal(first, second) and not torch.equal(first, plain)
