"""Training losses, with the spaces written down once.

SpineSegDiff (``x0`` prediction): the network emits mask LOGITS ``z``; ``p = sigmoid(z)`` in ``[0, 1]`` is
compared with the one-hot ground truth ``g`` in ``{0, 1}`` (NOT the ``[-1, 1]`` diffusion space); the sampler
uses ``x0_hat = 2 p - 1``. ``L = w_mse * MSE(p, g) + w_dice * (1 - Dice(p, g)) + w_bce * BCE(z, g)``
(paper appendix A.2).

IISDM (noise prediction): ``L = MSE(eps_hat, eps)``, optionally weighted per sample by Min-SNR-gamma
(:func:`min_snr_weights`; Hang et al., ICCV 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_SMOOTH = 1e-5


def soft_dice_loss(probs: torch.Tensor, target01: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """``1 - mean_c Dice_c`` with ``Dice_c = (2 sum(p g) + smooth) / (sum p + sum g + smooth)``.

    The sums run over the batch and all spatial positions of channel ``c`` (batch-aware, so an image where a
    structure is absent does not score 0 on its own). ``probs`` and ``target01``: ``(B, C, ...)`` in
    ``[0, 1]``.
    """
    dims = [0, *range(2, probs.ndim)]
    intersection = (probs * target01).sum(dim=dims)
    total = probs.sum(dim=dims) + target01.sum(dim=dims)
    dice = (2.0 * intersection + smooth) / (total + smooth)
    return 1.0 - dice.mean()


def segmentation_loss(
    logits: torch.Tensor,
    target01: torch.Tensor,
    *,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MSE + soft Dice + BCE between predicted mask probabilities and the one-hot ground truth.

    Args:
        logits: ``(B, C, H, W)`` network output (``C = 3``: SC, VB, IVD), any real values.
        target01: ``(B, C, H, W)`` one-hot ground truth in ``{0, 1}`` (soft values in ``[0, 1]`` also work).
        weights: weights of the MSE, Dice and BCE terms.

    Returns:
        ``(total, parts)``: the weighted sum (a scalar with gradient) and the unweighted terms ``{"mse",
        "dice", "bce"}`` detached, for logging.
    """
    if logits.shape != target01.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target01.shape)} must have one shape"
        )
    if logits.ndim < 3:
        raise ValueError(f"expected (B, C, ...) tensors, got {logits.ndim}D")
    if len(weights) != 3:
        raise ValueError(f"weights must hold 3 values (mse, dice, bce), got {weights!r}")
    target = target01.to(logits.dtype)
    probs = torch.sigmoid(logits)
    mse = F.mse_loss(probs, target)
    dice = soft_dice_loss(probs, target)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    total = weights[0] * mse + weights[1] * dice + weights[2] * bce
    return total, {"mse": mse.detach(), "dice": dice.detach(), "bce": bce.detach()}


DEFAULT_MAX_NOISE_WEIGHT = 100.0
"""The default cap of :func:`min_snr_weights` with a floor (``max_noise_weight`` of the training settings)."""


def min_snr_weights(alphas_cumprod_t: torch.Tensor, gamma: float, *, snr_floor: float | None = None,
                    max_weight: float = DEFAULT_MAX_NOISE_WEIGHT) -> torch.Tensor:
    """Min-SNR-gamma loss weights of noise prediction (Hang et al., ICCV 2023): ``min(SNR, gamma) / SNR``.

    ``SNR(t) = abar_t / (1 - abar_t)``. Noise prediction's plain MSE equals an x0 loss weighted by ``SNR``, which
    lets the nearly clean, easy steps dominate; clamping that weight at ``gamma`` (the paper's 5) evens out the
    steps' share of the gradient, and training converged about 3x faster there.

    The noisy end keeps the x0 weight ``SNR``, close to 0 where only the image tells where the mask is, so a
    noise predictor has almost no reason to learn to read the image. ``snr_floor`` also raises the x0 weight
    to at least ``snr_floor`` there (the truncated-SNR weighting ``max(SNR, 1)`` of Salimans and Ho, ICLR 2022,
    with ``snr_floor = 1``): the noise weight becomes ``clamp(SNR, snr_floor, gamma) / SNR``, capped at
    ``max_weight`` because ``1 / SNR`` grows without bound as ``abar_t -> 0``.

    Args:
        alphas_cumprod_t: ``(B,)`` ``abar_t`` of each sample's step, in ``(0, 1)``.
        gamma: the clamp, positive.
        snr_floor: ``None`` (Min-SNR alone) or the x0 weight's floor, in ``(0, gamma)``.
        max_weight: the cap of the noise weight with ``snr_floor``, at least 1.

    Returns:
        ``(B,)`` float32 weights: 1 where ``snr_floor <= SNR <= gamma``, ``gamma / SNR`` above, and (with
        ``snr_floor``) ``min(snr_floor / SNR, max_weight)`` below.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    if snr_floor is not None and not 0 < snr_floor < gamma:
        raise ValueError(f"snr_floor must lie in (0, gamma = {gamma}), got {snr_floor}")
    if max_weight < 1:
        raise ValueError(f"max_weight must be at least 1, got {max_weight}")
    snr = alphas_cumprod_t.double() / (1.0 - alphas_cumprod_t.double())
    if snr_floor is None:
        return (snr.clamp(max=gamma) / snr).float()
    return (snr.clamp(min=snr_floor, max=gamma) / snr).clamp(max=max_weight).float()


def epsilon_loss(pred_eps: torch.Tensor, eps: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between the predicted and the true noise (IISDM), both ``(B, C, H, W)``; with
    ``weights`` ``(B,)`` (:func:`min_snr_weights`), each sample's mean squared error weighted, then averaged."""
    if pred_eps.shape != eps.shape:
        raise ValueError(f"pred_eps {tuple(pred_eps.shape)} and eps {tuple(eps.shape)} must have one shape")
    if weights is None:
        return F.mse_loss(pred_eps, eps)
    per_sample = (pred_eps - eps).pow(2).flatten(1).mean(dim=1)
    return (weights.to(per_sample.dtype) * per_sample).mean()


def dice_cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The segmentation U-Net's loss: ``CE(z, y) + (1 - Dice)`` over the foreground classes (nnU-Net's recipe).

    Args:
        logits: ``(B, K, H, W)`` class logits (background first).
        labels: ``(B, H, W)`` int64 classes in ``0..K-1``.
    """
    cross_entropy = F.cross_entropy(logits, labels)
    probs = logits.softmax(dim=1)[:, 1:]
    target = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dice = soft_dice_loss(probs, target)
    return cross_entropy + dice, {"ce": cross_entropy.detach(), "dice": dice.detach()}
