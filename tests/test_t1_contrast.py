"""T1-weighted contrast simulated from the labels (issue 13): canal dark, vertebrae bright, discs intermediate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spinesegdiff.data.augment import T1_MEANS, AugmentConfig, augment_batch, t1_contrast
from spinesegdiff.training.config import TrainConfig, make_train_config

REPO = Path(__file__).resolve().parents[1]


def _t2_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A T2-like slice: bright canal (0.9), grey bodies (0.4), bright discs (0.8), fat (0.7), muscle (0.2), air."""
    labels = torch.zeros((3, 64, 64), dtype=torch.long)
    image = torch.zeros((3, 1, 64, 64))
    image[:, :, :, 8:36] = 0.2  # muscle in front
    image[:, :, :, 44:] = 0.7  # fat behind
    labels[:, 10:50, 20:30] = 2
    labels[:, 28:32, 20:30] = 3
    labels[:, 10:50, 30:36] = 1
    for value, intensity in ((1, 0.9), (2, 0.4), (3, 0.8)):
        image[:, 0][labels == value] = intensity
    image = image + 0.02 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    return image.clamp(0, 1), labels


def _mean(image: torch.Tensor, labels: torch.Tensor, value: int, b: int) -> float:
    return float(image[b, 0][labels[b] == value].mean())


def test_the_structures_take_t1_order_and_the_background_stays() -> None:
    image, labels = _t2_batch()
    config = AugmentConfig(contrast_blur_px=0.0)
    for seed in range(10):
        out = t1_contrast(image, labels, config, torch.Generator().manual_seed(seed))
        assert out.shape == image.shape and float(out.min()) >= 0 and float(out.max()) <= 1
        background = labels == 0
        assert torch.allclose(out[:, 0][background], image[:, 0][background], atol=1e-6), "fat, muscle, air kept"
        for b in range(3):
            canal, body, disc = (_mean(out, labels, v, b) for v in (1, 2, 3))
            assert T1_MEANS["canal"][0] - 0.01 <= canal <= T1_MEANS["canal"][1] + 0.01
            assert T1_MEANS["vertebra"][0] - 0.01 <= body <= T1_MEANS["vertebra"][1] + 0.01
            assert T1_MEANS["disc"][0] - 0.01 <= disc <= T1_MEANS["disc"][1] + 0.01
            assert body > disc and body > canal, "bright marrow over dark CSF and discs, unlike the T2 input"
    assert _mean(image, labels, 1, 0) > _mean(image, labels, 2, 0), "the input was T2-like"


def test_texture_inside_a_structure_is_kept_up_to_a_gain() -> None:
    image, labels = _t2_batch()
    out = t1_contrast(image, labels, AugmentConfig(contrast_blur_px=0.0), torch.Generator().manual_seed(3))
    inside = labels[0] == 2
    x, y = image[0, 0][inside], out[0, 0][inside]
    assert torch.corrcoef(torch.stack([x, y]))[0, 1] > 0.99, "an affine map with a positive gain"
    assert float(y.std()) < float(x.std()), "with a gain below one"


def test_off_by_default_and_reproducible_when_on() -> None:
    image, labels = _t2_batch()
    plain_generator = torch.Generator().manual_seed(0)
    plain, _ = augment_batch(image, labels, AugmentConfig(), plain_generator)
    off_generator = torch.Generator().manual_seed(0)
    off, _ = augment_batch(image, labels, AugmentConfig(p_t1_contrast=0.0), off_generator)
    assert torch.equal(plain, off) and torch.equal(plain_generator.get_state(), off_generator.get_state())
    config = AugmentConfig(p_t1_contrast=1.0, p_gamma=0.0, p_remap=0.0, p_inversion=0.0, p_bias=0.0, p_noise=0.0,
                           p_spatial=0.0)
    first, _ = augment_batch(image, labels, config, torch.Generator().manual_seed(0))
    second, _ = augment_batch(image, labels, config, torch.Generator().manual_seed(0))
    assert torch.equal(first, second) and not torch.equal(first, plain)
    assert _mean(first, labels, 2, 0) > _mean(first, labels, 1, 0), "the batch went through the T1 step"
    with pytest.raises(ValueError, match="p_t1_contrast"):
        AugmentConfig(p_t1_contrast=1.5)
    nested = TrainConfig.from_dict({"data": "d", "out": "o", "augment": {"p_t1_contrast": 0.3}})
    assert nested.augment.p_t1_contrast == 0.3 and TrainConfig.from_dict(nested.to_dict()) == nested


def test_the_t1_configs_are_the_general_ones_with_t1_contrast() -> None:
    for name, general_name in (("unet-cpu-t1.json", "unet-cpu-general.json"),
                               ("refiner-cpu-t1.json", "refiner-cpu-general.json")):
        t1 = json.loads((REPO / "configs" / name).read_text(encoding="utf-8"))
        general = json.loads((REPO / "configs" / general_name).read_text(encoding="utf-8"))
        assert t1["augment"] == {**general["augment"], "p_t1_contrast": 0.3}
        assert {k: v for k, v in t1.items() if k not in ("augment", "optimisation", "validation")} == \
            {k: v for k, v in general.items() if k not in ("augment", "optimisation", "validation")}
        assert make_train_config(REPO / "configs" / name, {"data": "d", "out": "o"}).augment.p_t1_contrast == 0.3
