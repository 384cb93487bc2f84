"""The sampler's pure functions worked out by hand, and a fake network whose every output is known.

Written against mutants of ``pipelines/sampling.py`` that the rest of the suite let live (docs/TESTING.md):
the fusion or class method dropped on the way to the result, the variance's correction, the normalisation axes,
the clamps that keep probabilities and entropies in ``[0, 1]``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spinesegdiff.diffusion import DDIMScheduler, make_schedule
from spinesegdiff.pipelines.sampling import (
    class_probabilities,
    entropy_floor,
    fuse_step_means,
    fusion_weights,
    normalised_entropy,
    rescaled_entropy,
    sample_segmentation,
    structure_entropy,
    x0_to_probabilities,
)


def _binary_entropy_bits(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def test_fusion_weights_by_hand() -> None:
    np.testing.assert_allclose(fusion_weights(1).numpy(), [1.0])
    raw = np.exp([-1.0, -0.5, 0.0])  # Ts = 3, a = 1.5: exp(-a (3 - t) / 3) for t = 1, 2, 3
    np.testing.assert_allclose(fusion_weights(3).numpy(), raw / raw.sum())
    with pytest.raises(ValueError, match="num_fuse_steps must be at least 1, got 0"):
        fusion_weights(0)


def test_exponential_fusion_by_hand() -> None:
    means = torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64).view(3, 1, 1, 1, 1).expand(3, 2, 3, 1, 1)
    expected = float((fusion_weights(3) * torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64)).sum())
    fused = fuse_step_means(means, fusion="exp")
    assert fused.shape == (2, 3, 1, 1) and fused.dtype == torch.float64
    np.testing.assert_allclose(fused.numpy(), expected)
    halved = fuse_step_means(means, fusion="exp", a=0.0)  # a = 0: equal weights
    np.testing.assert_allclose(halved.numpy(), 0.5)


def test_uncertainty_fusion_by_hand_per_pixel() -> None:
    values = [(0.5, 0.9), (0.1, 0.8)]  # two pixels, two fused steps each
    means = torch.tensor(values, dtype=torch.float64).T.reshape(2, 1, 1, 1, 2).expand(2, 2, 3, 1, 2)
    fused = fuse_step_means(means, fusion="uncertainty")
    assert fused.shape == (2, 3, 1, 2)
    for pixel, steps in enumerate(values):
        sig = [1 / (1 + math.exp(-(i + 1) / 2)) for i in range(2)]  # sigmoid((i + 1) / Ts), Ts = 2
        w = [math.exp(s * (1 - _binary_entropy_bits(p))) for s, p in zip(sig, steps, strict=True)]
        expected = sum(wi * p for wi, p in zip(w, steps, strict=True)) / sum(w)
        np.testing.assert_allclose(fused[..., pixel].numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"step_means must be \(Ts, B, \.\.\.\), got 1D"):
        fuse_step_means(torch.ones(3))
    with pytest.raises(ValueError, match="fusion must be one of"):
        fuse_step_means(means, fusion="mean")  # type: ignore[arg-type]


def test_probabilities_and_entropies_stay_in_their_ranges() -> None:
    np.testing.assert_allclose(x0_to_probabilities(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])).numpy(),
                               [0.0, 0.0, 0.5, 1.0, 1.0])
    entropy = structure_entropy(torch.tensor([-0.1, 0.0, 0.5, 0.9, 1.0, 1.2], dtype=torch.float64))
    np.testing.assert_allclose(entropy.numpy(), [0.0, 0.0, 1.0, _binary_entropy_bits(0.9), 0.0, 0.0],
                               atol=1e-12)
    two = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64).view(2, 2, 1, 1)
    np.testing.assert_allclose(normalised_entropy(two).flatten().numpy(), [1.0, 0.0], atol=1e-12)
    uniform = torch.full((1, 4, 3, 3), 0.25)
    assert float(normalised_entropy(uniform).max()) <= 1.0 and float(rescaled_entropy(uniform).max()) <= 1.0
    with pytest.raises(ValueError, match="need at least 2 classes, got 1"):
        normalised_entropy(torch.ones(1, 1, 2, 2))


def test_class_probabilities_sum_to_one_over_classes_for_each_image() -> None:
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.6]], dtype=torch.float64).view(2, 3, 1, 1)
    for method in ("softmax", "normalise"):
        classes = class_probabilities(probs, method)
        assert classes.shape == (2, 4, 1, 1)
        np.testing.assert_allclose(classes.sum(dim=1).numpy(), 1.0)
    normalised = class_probabilities(probs, "normalise").flatten(1).numpy()
    np.testing.assert_allclose(normalised[0], np.asarray([0.1, 0.9, 0.1, 0.0]) / 1.1)  # background 1 - 0.9
    np.testing.assert_allclose(class_probabilities(probs[:, :, 0, 0], "normalise").numpy(),
                               class_probabilities(probs, "normalise")[:, :, 0, 0].numpy())  # (B, C) works
    with pytest.raises(ValueError, match=r"mask_probs must be \(B, C, \.\.\.\), got 1D"):
        class_probabilities(torch.ones(3))


def test_the_entropy_floor_is_that_of_a_certain_pixel_under_softmax() -> None:
    e = math.e
    p = np.asarray([e, 1, 1, 1]) / (e + 3)
    expected = float(-(p * np.log(p)).sum() / math.log(4))
    assert entropy_floor(4) == pytest.approx(expected) and entropy_floor(4, "normalise") == 0.0
    certain = class_probabilities(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
    assert float(rescaled_entropy(certain)) == pytest.approx(0.0, abs=1e-5)  # the default method is softmax (float32)


class _KnownLogits:
    """A denoiser whose x0 logits are known: sample ``s`` of each image gets ``s + t / 1000``."""

    has_image_encoder = False

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def __call__(self, x_t, t, *, image, image_features=None):
        rows = torch.arange(x_t.shape[0], dtype=x_t.dtype) % self.num_samples
        step = t.to(x_t.dtype) if torch.is_tensor(t) else torch.tensor(float(t))
        return (rows + step / 1000.0).view(-1, 1, 1, 1).expand_as(x_t).clone()


def _sample(**options):
    scheduler = DDIMScheduler(make_schedule("linear", num_train_timesteps=1000), prediction_type="sample")
    image = torch.zeros(1, 1, 4, 4)
    return sample_segmentation(_KnownLogits(2), image, scheduler=scheduler, num_samples=2, num_steps=4,
                               fuse_steps=4, generator=torch.Generator().manual_seed(0), **options)


def test_the_sampler_uses_the_fusion_and_class_method_it_is_given_and_the_population_variance() -> None:
    exp, uncertainty = _sample(fusion="exp"), _sample(fusion="uncertainty")
    assert not torch.allclose(exp.probabilities, uncertainty.probabilities)
    softmax, normalise = _sample(class_method="softmax"), _sample(class_method="normalise")
    np.testing.assert_allclose(normalise.class_probabilities.numpy(),
                               class_probabilities(normalise.probabilities, "normalise").numpy(), rtol=1e-6)
    assert not torch.allclose(softmax.class_probabilities, normalise.class_probabilities)
    last = exp.fused_timesteps[-1]
    final = torch.sigmoid(torch.tensor([0.0, 1.0]) + last / 1000.0)  # the last step's two samples
    np.testing.assert_allclose(exp.variance.numpy(), float(((final[1] - final[0]) / 2) ** 2), rtol=1e-5)
