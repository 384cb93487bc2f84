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
