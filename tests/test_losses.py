"""Training losses on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spinesegdiff.training.losses import epsilon_loss, segmentation_loss, soft_dice_loss


def _target() -> torch.Tensor:
    """(2, 3, 4, 4) one-hot masks with every channel present somewhere."""
    labels = torch.tensor([[0, 1, 2, 3], [1, 1, 2, 2], [3, 3, 0, 0], [2, 0, 1, 3]])
    labels = torch.stack([labels, labels.flip(1)])
    return F.one_hot(labels, 4).permute(0, 3, 1, 2)[:, 1:].float()


def test_perfect_prediction_has_small_loss() -> None:
    target = _target()
    logits = (target * 2 - 1) * 20.0  # sigmoid saturates at the truth
    total, parts = segmentation_loss(logits, target)
    assert set(parts) == {"mse", "dice", "bce"}
    assert total.item() < 1e-6
    assert all(value.item() < 1e-6 for value in parts.values())


def test_inverted_prediction_has_large_loss() -> None:
    target = _target()
    logits = (1 - target * 2) * 20.0
    total, parts = segmentation_loss(logits, target)
    assert parts["mse"].item() == pytest.approx(1.0, abs=1e-6)
    assert parts["dice"].item() == pytest.approx(1.0, abs=1e-6)
    assert parts["bce"].item() == pytest.approx(20.0, abs=1e-4)  # -log(sigmoid(-20)) ~ 20
    assert total.item() == pytest.approx(22.0, abs=1e-3)


def test_uninformed_prediction_by_hand() -> None:
    target = _target()
    total, parts = segmentation_loss(torch.zeros_like(target), target)  # p = 0.5 everywhere
    assert parts["mse"].item() == pytest.approx(0.25)
    assert parts["bce"].item() == pytest.approx(math.log(2.0))
    # per channel: Dice = 2 * 0.5 * G / (0.5 * N + G), N = 32 pixels, G = foreground count
    counts = target.sum(dim=(0, 2, 3))
    dice = (2 * 0.5 * counts + 1e-5) / (0.5 * 32 + counts + 1e-5)
    assert parts["dice"].item() == pytest.approx(1 - dice.mean().item(), rel=1e-6)
    assert total.item() == pytest.approx(0.25 + math.log(2.0) + 1 - dice.mean().item(), rel=1e-6)


def test_weights_scale_the_terms_and_total_has_gradient() -> None:
    target = _target()
    logits = torch.zeros_like(target, requires_grad=True)
    total, parts = segmentation_loss(logits, target, weights=(2.0, 0.0, 0.5))
    assert total.item() == pytest.approx(2.0 * parts["mse"].item() + 0.5 * parts["bce"].item())
    assert not parts["mse"].requires_grad
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_dice_is_batch_aware() -> None:
    # image 0: structure absent, one false-positive pixel; image 1: structure everywhere, predicted perfectly.
    target = torch.zeros(2, 1, 2, 2)
    target[1] = 1.0
    probs = target.clone()
    probs[0, 0, 0, 0] = 1.0
    # sums over the whole batch: Dice = 2 * 4 / (5 + 4); a per-image mean would give 1 - (0 + 1) / 2 = 0.5
    assert soft_dice_loss(probs, target).item() == pytest.approx(1 - 8 / 9, abs=1e-5)
    # empty prediction of a present structure: Dice 0
    assert soft_dice_loss(torch.zeros_like(target), target).item() == pytest.approx(1.0, abs=1e-5)
    # empty ground truth and empty prediction: Dice 1 thanks to the smoothing
    empty = torch.zeros(1, 1, 2, 2)
    assert soft_dice_loss(empty, empty).item() == pytest.approx(0.0, abs=1e-6)


def test_segmentation_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must have one shape"):
        segmentation_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 2))
    with pytest.raises(ValueError, match="3 values"):
        segmentation_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), weights=(1.0, 1.0))  # type: ignore[arg-type]


def test_epsilon_loss_by_hand() -> None:
    eps = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    assert epsilon_loss(eps, eps).item() == 0.0
    assert epsilon_loss(torch.zeros_like(eps), eps).item() == pytest.approx((1 + 1 + 0 + 4) / 4)
    with pytest.raises(ValueError, match="one shape"):
        epsilon_loss(eps, eps[0])


def test_min_snr_weights_clamp_the_snr_at_gamma() -> None:
    from spinesegdiff.training.losses import min_snr_weights

    abar = torch.tensor([0.999, 0.9, 5 / 6, 0.5, 0.01], dtype=torch.float64)  # SNR 999, 9, 5, 1, 0.0101
    weights = min_snr_weights(abar, 5.0)
    torch.testing.assert_close(weights, torch.tensor([5 / 999, 5 / 9, 1.0, 1.0, 1.0]), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="gamma must be positive"):
        min_snr_weights(abar, 0.0)


def test_snr_floor_raises_the_noisy_steps_weights_up_to_the_cap() -> None:
    from spinesegdiff.training.losses import min_snr_weights

    abar = torch.tensor([0.999, 0.5, 0.2, 0.05, 1e-6], dtype=torch.float64)  # SNR 999, 1, 0.25, 0.0526, 1e-6
    weights = min_snr_weights(abar, 5.0, snr_floor=1.0, max_weight=100.0)
    torch.testing.assert_close(weights, torch.tensor([5 / 999, 1.0, 4.0, 19.0, 100.0]), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(min_snr_weights(abar, 5.0)[1:], torch.ones(4))  # Min-SNR alone: 1 at the noisy end
    with pytest.raises(ValueError, match="snr_floor must lie"):
        min_snr_weights(abar, 5.0, snr_floor=5.0)
    with pytest.raises(ValueError, match="max_weight"):
        min_snr_weights(abar, 5.0, snr_floor=1.0, max_weight=0.5)


def test_weighted_epsilon_loss_weights_each_samples_error() -> None:
    pred = torch.zeros(2, 3, 4, 4)
    eps = torch.stack([torch.full((3, 4, 4), 1.0), torch.full((3, 4, 4), 2.0)])  # per-sample MSE 1 and 4
    assert float(epsilon_loss(pred, eps)) == pytest.approx(2.5)
    assert float(epsilon_loss(pred, eps, torch.tensor([1.0, 0.5]))) == pytest.approx((1.0 + 2.0) / 2)
    assert float(epsilon_loss(pred, eps, torch.ones(2))) == pytest.approx(float(epsilon_loss(pred, eps)))


def test_training_loss_of_a_noise_predictor_uses_min_snr_weights() -> None:
    from spinesegdiff.diffusion import make_schedule
    from spinesegdiff.training.loop import training_loss
    from spinesegdiff.training.losses import min_snr_weights

    class Zero(torch.nn.Module):  # predicts no noise: the loss is each sample's mean squared noise, weighted
        def forward(self, x_t, t, image=None):
            return torch.zeros_like(x_t)

    schedule = make_schedule("linear", 1000)
    image, labels = torch.zeros(3, 1, 8, 8), torch.zeros(3, 8, 8, dtype=torch.long)
    steps = torch.tensor([5, 300, 900])
    plain, _ = training_loss(Zero(), image, labels, schedule=schedule, prediction_type="epsilon",
                             generator=torch.Generator().manual_seed(1), timesteps=steps)
    weighted, _ = training_loss(Zero(), image, labels, schedule=schedule, prediction_type="epsilon",
                                generator=torch.Generator().manual_seed(1), timesteps=steps, min_snr_gamma=5.0)
    floored, _ = training_loss(Zero(), image, labels, schedule=schedule, prediction_type="epsilon",
                               generator=torch.Generator().manual_seed(1), timesteps=steps, min_snr_gamma=5.0,
                               snr_floor=1.0, max_noise_weight=50.0)
    noise = torch.randn((3, 3, 8, 8), generator=torch.Generator().manual_seed(1))  # the loss's own draw
    per_sample = noise.pow(2).flatten(1).mean(dim=1)
    weights = min_snr_weights(schedule.alphas_cumprod[steps], 5.0)
    assert float(plain) == pytest.approx(float(per_sample.mean()), rel=1e-5)
    assert float(weighted) == pytest.approx(float((weights * per_sample).mean()), rel=1e-5)
    assert float(weights[0]) < 0.1 and float(weights[2]) == 1.0  # the nearly clean step counts far less
    floors = min_snr_weights(schedule.alphas_cumprod[steps], 5.0, snr_floor=1.0, max_weight=50.0)
    assert float(floored) == pytest.approx(float((floors * per_sample).mean()), rel=1e-5)
    assert float(floors[2]) == 50.0  # t = 900: SNR 2.7e-4, the floor's weight capped


def test_min_snr_gamma_is_a_validated_optimisation_setting() -> None:
    from spinesegdiff.training.config import OptimisationSettings, TrainConfig

    assert OptimisationSettings().min_snr_gamma is None
    config = TrainConfig.from_dict({"data": "d", "out": "o", "optimisation": {"min_snr_gamma": 5.0}})
    assert config.optimisation.min_snr_gamma == 5.0
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        OptimisationSettings(min_snr_gamma=0.0)
    with pytest.raises(ValueError, match="snr_floor must lie"):
        OptimisationSettings(snr_floor=1.0)  # the floor belongs to Min-SNR's clamp
    with pytest.raises(ValueError, match="max_noise_weight"):
        OptimisationSettings(min_snr_gamma=5.0, snr_floor=1.0, max_noise_weight=0.0)
    assert OptimisationSettings(min_snr_gamma=5.0, snr_floor=1.0).max_noise_weight == 100.0


def test_noisier_timesteps_draw_the_asked_share_from_the_noisier_half() -> None:
    from spinesegdiff.training.loop import noisier_timesteps

    generator = torch.Generator().manual_seed(0)
    all_noisy = noisier_timesteps(1000, 4000, 1.0, generator, torch.device("cpu"))
    assert int(all_noisy.min()) >= 500 and int(all_noisy.max()) == 999
    uniform = noisier_timesteps(1000, 4000, 0.0, generator, torch.device("cpu"))
    assert int(uniform.min()) == 0 and abs(float((uniform >= 500).float().mean()) - 0.5) < 0.03
    half = noisier_timesteps(1000, 4000, 0.5, generator, torch.device("cpu"))
    assert abs(float((half >= 500).float().mean()) - 0.75) < 0.03  # 0.5 + 0.5 * 0.5
    assert int(half.min()) >= 0 and int(half.max()) <= 999


def test_high_noise_share_is_a_validated_optimisation_setting() -> None:
    from spinesegdiff.training.config import OptimisationSettings

    assert OptimisationSettings().high_noise_share == 0.0
    assert OptimisationSettings(high_noise_share=0.5).high_noise_share == 0.5
    with pytest.raises(ValueError, match="high_noise_share must lie in"):
        OptimisationSettings(high_noise_share=1.5)
