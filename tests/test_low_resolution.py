"""Coarser in-plane acquisition simulated in k-space (issue 13: resolution jitter and Gibbs ringing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spinesegdiff.data.augment import AugmentConfig, augment_batch, k_space_window, low_resolution
from spinesegdiff.errors import SpineSegDiffError
from spinesegdiff.training.config import TrainConfig, make_train_config

REPO = Path(__file__).resolve().parents[1]


def _edges(batch: int = 2, size: int = 64) -> torch.Tensor:
    """``(B, 1, size, size)``: a bright band (0.8) on grey (0.3) running along the rows, so it varies across the
    columns only."""
    image = torch.full((batch, 1, size, size), 0.3)
    image[..., size // 4: size // 2] = 0.8
    return image


def test_the_window_keeps_the_band_it_is_told_to() -> None:
    frequency = torch.fft.fftfreq(64).abs() * 2
    full = k_space_window(64, torch.tensor([1.0]), torch.tensor([0.0]))
    assert torch.equal(full, torch.ones(1, 64)), "pixel size 1 with a hard cut keeps everything"
    half = k_space_window(64, torch.tensor([0.5]), torch.tensor([0.0]))[0]
    assert torch.equal(half, (frequency <= 0.5).float()), "a hard cut: 1 inside the band, 0 outside"
    tapered = k_space_window(64, torch.tensor([0.5]), torch.tensor([0.5]))[0]
    assert tapered[0] == 1.0 and torch.all(tapered[frequency <= 0.25] == 1.0)
    assert torch.all(tapered[frequency > 0.5] == 0.0)
    rolling = (frequency > 0.25) & (frequency < 0.5)
    assert torch.all((tapered[rolling] > 0) & (tapered[rolling] < 1)), "the outer half of the band rolls off"
    order = torch.argsort(frequency[: 33])
    assert torch.all(tapered[: 33][order].diff() <= 0), "never rising with frequency"


def test_nothing_beyond_the_kept_band_survives() -> None:
    image = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    config = AugmentConfig(acquired_pixel_size=(2.0, 2.0), k_space_taper=(0.0, 0.0))
    out = low_resolution(image, config, torch.Generator().manual_seed(1))
    assert out.shape == image.shape and out.dtype == image.dtype
    # The image is positive and smooth enough that the magnitude is the filtered image itself.
    spectrum = torch.fft.fft2(out).abs()
    frequency = torch.fft.fftfreq(64).abs() * 2
    outside = (frequency[:, None] > 0.5) | (frequency[None, :] > 0.5)
    assert float(spectrum[..., outside].max()) < 1e-3 * float(spectrum.max())
    assert float((out - image).abs().mean()) > 0.01, "and the fine detail is gone"
    same = low_resolution(image, AugmentConfig(acquired_pixel_size=(1.0, 1.0), k_space_taper=(0.0, 0.0)),
                          torch.Generator().manual_seed(1))
    assert torch.allclose(same, image, atol=1e-5), "the grid's own resolution changes nothing"


def test_a_hard_cut_rings_and_a_soft_one_rings_less() -> None:
    image = _edges()
    hard = low_resolution(image, AugmentConfig(acquired_pixel_size=(2.0, 2.0), k_space_taper=(0.0, 0.0)),
                          torch.Generator().manual_seed(0))
    soft = low_resolution(image, AugmentConfig(acquired_pixel_size=(2.0, 2.0), k_space_taper=(1.0, 1.0)),
                          torch.Generator().manual_seed(0))
    assert float(hard.max()) > 0.83, "Gibbs overshoot above the band's 0.8"
    assert float(soft.max()) < float(hard.max()) - 0.02
    assert float(hard[..., 32:48].min()) < 0.28, "and undershoot below the grey's 0.3 beside the band"
    dark = torch.where(image > 0.5, image, torch.zeros(()))  # beside air the undershoot is negative
    magnitude = low_resolution(dark, AugmentConfig(acquired_pixel_size=(2.0, 2.0), k_space_taper=(0.0, 0.0)),
                               torch.Generator().manual_seed(0))
    window = k_space_window(64, torch.tensor([0.5, 0.5]), torch.zeros(2))
    filtered = torch.fft.ifft2(torch.fft.fft2(dark) * window[:, None, :, None] * window[:, None, None, :]).real
    assert float(filtered.min()) < -0.03
    assert torch.allclose(magnitude, filtered.abs(), atol=1e-5), "a scanner's magnitude image: rings, not holes"


def test_each_axis_gets_its_own_pixel_size() -> None:
    image = _edges(batch=6)  # varies across the columns only: only the column window can change it
    config = AugmentConfig(acquired_pixel_size=(1.0, 2.2), k_space_taper=(0.0, 0.0))
    out = low_resolution(image, config, torch.Generator().manual_seed(0))
    sizes = torch.rand((6, 2), generator=torch.Generator().manual_seed(0)) * 1.2 + 1.0  # the function's first draw
    columns = k_space_window(64, 1.0 / sizes[:, 1], torch.zeros(6))
    expected = torch.fft.ifft(torch.fft.fft(image, dim=-1) * columns[:, None, None, :], dim=-1).abs()
    assert torch.allclose(out, expected, atol=1e-5), "the second pixel size is the columns'"
    transposed = low_resolution(image.transpose(-1, -2), config, torch.Generator().manual_seed(0))
    rows = k_space_window(64, 1.0 / sizes[:, 0], torch.zeros(6))
    expected = torch.fft.ifft(torch.fft.fft(image, dim=-1) * rows[:, None, None, :], dim=-1).abs()
    assert torch.allclose(transposed, expected.transpose(-1, -2), atol=1e-5), "the first the rows'"
    assert not torch.allclose(out, transposed.transpose(-1, -2), atol=1e-3), "and they differ"


def test_off_by_default_and_reproducible_when_on() -> None:
    image, labels = _edges(), torch.zeros((2, 64, 64), dtype=torch.long)
    plain, _ = augment_batch(image, labels, AugmentConfig(), torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    again, _ = augment_batch(image, labels, AugmentConfig(p_low_resolution=0.0), generator)
    reference = torch.Generator().manual_seed(0)
    augment_batch(image, labels, AugmentConfig(), reference)
    assert torch.equal(plain, again) and torch.equal(generator.get_state(), reference.get_state())
    config = AugmentConfig(p_low_resolution=1.0, p_noise=0.0)
    first, _ = augment_batch(image, labels, config, torch.Generator().manual_seed(0))
    second, _ = augment_batch(image, labels, config, torch.Generator().manual_seed(0))
    assert torch.equal(first, second) and not torch.equal(first, plain)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0


def test_settings_are_checked() -> None:
    for bad in ({"p_low_resolution": 1.5}, {"acquired_pixel_size": (0.5, 2.0)},
                {"acquired_pixel_size": (2.0, 1.5)}, {"acquired_pixel_size": (1.0, float("inf"))},
                {"k_space_taper": (-0.1, 0.5)}, {"k_space_taper": (0.2, 1.5)}, {"k_space_taper": (0.3,)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AugmentConfig(**bad)
    config = AugmentConfig(acquired_pixel_size=[1.5, 2.0], k_space_taper=[0, 0])
    assert config.acquired_pixel_size == (1.5, 2.0) and config.k_space_taper == (0, 0)
    nested = TrainConfig.from_dict({"data": "d", "out": "o", "augment": {"p_low_resolution": 0.5,
                                                                         "acquired_pixel_size": [1.0, 3.0]}})
    assert nested.augment.acquired_pixel_size == (1.0, 3.0)
    assert TrainConfig.from_dict(nested.to_dict()) == nested


def test_the_kspace_config_is_the_general_one_with_coarser_acquisitions() -> None:
    kspace = json.loads((REPO / "configs" / "unet-cpu-kspace.json").read_text(encoding="utf-8"))
    general = json.loads((REPO / "configs" / "unet-cpu-general.json").read_text(encoding="utf-8"))
    added = {"p_low_resolution": 0.5, "acquired_pixel_size": [1.0, 2.2], "k_space_taper": [0.0, 0.5]}
    assert kspace == {**general, "augment": {**general["augment"], **added}}
    config = make_train_config(REPO / "configs" / "unet-cpu-kspace.json", {"data": "d", "out": "o"})
    assert config.augment.p_low_resolution == 0.5
    with pytest.raises(SpineSegDiffError, match="acquired_pixel_size"):
        make_train_config(REPO / "configs" / "unet-cpu-kspace.json",
                          {"data": "d", "out": "o", "augment": {"acquired_pixel_size": [0.5, 1]}})
