"""Multi-sample DDIM segmentation, step fusion and entropy heatmaps (paper eq. 3-5, Algorithm 1).

Pure functions on tensors: the network comes in as an argument and is only called, so everything here can be
tested with a fake network. Spaces:

* the diffusion runs on masks in ``[-1, 1]`` (one-hot * 2 - 1), ``mask_channels = 3`` (SC, VB, IVD);
* an ``x0`` estimate becomes structure probabilities ``p = clamp((x0 + 1) / 2, 0, 1)``; for an
  ``x0``-predicting network (SpineSegDiff) whose output is logits, ``x0 = 2 sigmoid(logits) - 1``, so
  ``p = sigmoid(logits)``;
* ``Xbar_t`` is the mean of ``p`` over the ``S`` samples at step ``t``; only the last ``Ts`` (cleanest) steps
  are kept, and fused into ``X_f`` with :func:`fusion_weights` (the last step weighs most);
* 4-class probabilities (background, SC, VB, IVD) come from :func:`class_probabilities`, the heatmap is the
  maximum over the fused steps of their normalised entropy.

Batch layout: the ``S`` samples of image ``b`` are rows ``b * S .. b * S + S - 1`` of the sample batch
(``repeat_interleave`` order). Images are slices ``(B, C, H, W)``; the samplers take slabs ``(B, C, D, H, W)``
(Diff-UNet 3D) alike, every per-pixel output then gaining the ``D`` axis before ``H, W``. Put the network in
``eval()`` mode before sampling (dropout would otherwise add noise); sampling runs under ``torch.no_grad``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from spinesegdiff.diffusion.ddim import DDIMScheduler
from spinesegdiff.diffusion.schedules import add_noise

Fusion = Literal["exp", "uncertainty"]
FUSIONS: tuple[str, ...] = ("exp", "uncertainty")
ClassMethod = Literal["softmax", "normalise"]
CLASS_METHODS: tuple[str, ...] = ("softmax", "normalise")
DEFAULT_NUM_STEPS = 50  # DDIM steps of a full run (the reference code used 50)


class DenoisingNetwork(Protocol):
    """What the samplers need from a network (both :mod:`spinesegdiff.models` networks qualify).

    ``net(x_t, t, image=y, image_features=f)`` returns ``(N, C, H, W)``: logits of ``x0`` for
    ``prediction_type="sample"``, noise for ``"epsilon"``. A network with ``has_image_encoder = True`` also
    offers ``encode_image(y)``, whose output is passed back as ``image_features``.
    """

    def __call__(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        image: torch.Tensor,
        image_features: list[torch.Tensor] | None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class SegmentationResult:
    """Output of :func:`sample_segmentation` and :func:`sample_reference_procedure`.

    Attributes:
        probabilities: ``(B, C, H, W)`` fused structure probabilities ``X_f`` in ``[0, 1]`` (SC, VB, IVD).
        class_probabilities: ``(B, C + 1, H, W)`` class probabilities of ``X_f`` (background first), see
            :func:`class_probabilities`.
        labels: ``(B, H, W)`` int64 label map in ``{0 .. C}`` (0 background, 1 SC, 2 VB, 3 IVD), the argmax of
            ``class_probabilities``: a structure wins only where its probability exceeds 0.5 and those of the
            other structures, background wins ties.
        uncertainty: ``(B, H, W)`` in ``[0, 1]``, max over the fused steps of the class entropy of ``Xbar_t``
            (paper eq. 4-5), divided by ``log K`` and stretched by :func:`rescaled_entropy` so that a certain
            pixel is 0 and a uniform one 1.
        structure_uncertainty: ``(B, C, H, W)`` in ``[0, 1]``, max over the fused steps of the binary entropy
            (in bits) of each structure probability of ``Xbar_t``.
        variance: ``(B, C, H, W)``, variance over the ``S`` samples of the final step's probabilities (IISDM
            uncertainty; population variance, 0 for ``S = 1``), in ``[0, 0.25]``.
        fused_timesteps: the timesteps whose estimates were fused, in sampling order (last = cleanest).
        num_network_calls: denoiser forward passes made.
        num_image_encoder_calls: image-encoder passes made (0 for a network without one).
    """

    probabilities: torch.Tensor
    class_probabilities: torch.Tensor
    labels: torch.Tensor
    uncertainty: torch.Tensor
    structure_uncertainty: torch.Tensor
    variance: torch.Tensor
    fused_timesteps: tuple[int, ...]
    num_network_calls: int
    num_image_encoder_calls: int


def fusion_weights(num_fuse_steps: int, a: float | None = None) -> torch.Tensor:
    """Exponential step weights of paper eq. 3, normalised to sum to 1.

    ``w_t = exp(-a (Ts - t) / Ts)`` for ``t = 1 .. Ts``, ``a = Ts / 2`` by default; entry ``t - 1`` weighs the
    ``t``-th fused step in sampling order, so the last (cleanest) step weighs most.

    Returns:
        ``(Ts,)`` float64 tensor, positive, increasing, summing to 1.
    """
    if num_fuse_steps < 1:
        raise ValueError(f"num_fuse_steps must be at least 1, got {num_fuse_steps}")
    steps = float(num_fuse_steps)
    rate = steps / 2.0 if a is None else float(a)
    if not math.isfinite(rate) or rate < 0.0:
        raise ValueError(f"a must be a finite non-negative number, got {a}")
    t = torch.arange(1, num_fuse_steps + 1, dtype=torch.float64)
    weights = torch.exp(-rate * (steps - t) / steps)
    return weights / weights.sum()


def logits_to_x0(logits: torch.Tensor) -> torch.Tensor:
    """``x0`` estimate in ``[-1, 1]`` from mask logits: ``2 * sigmoid(logits) - 1``."""
    return 2.0 * torch.sigmoid(logits) - 1.0


def x0_to_probabilities(x0: torch.Tensor) -> torch.Tensor:
    """Structure probabilities ``clamp((x0 + 1) / 2, 0, 1)`` from an ``x0`` estimate in ``[-1, 1]``."""
    return ((x0 + 1.0) / 2.0).clamp(0.0, 1.0)


def class_probabilities(mask_probs: torch.Tensor, method: ClassMethod = "softmax") -> torch.Tensor:
    """``K = C + 1`` class probabilities (background first) from ``C`` structure probabilities.

    The background score is ``1 - max_c p_c``; the scores ``[1 - max p, p_1, .., p_C]`` are then turned into
    probabilities by

    * ``"softmax"`` (default, the paper's ``p_t = softmax(Xbar_t)`` over ``K = 4`` classes): ``softmax`` over
      the channel axis. Scores lie in ``[0, 1]``, so the result is never sharper than ``e : 1 : 1 : 1``: a
      certain pixel has normalised entropy 0.915, a maximally ambiguous one 1.0, and heatmaps built on it live
      in ``[0.91, 1]``; compare them relative to each other.
    * ``"normalise"``: division by their sum; a certain pixel has entropy 0, the whole ``[0, 1]`` is used.

    Either way the argmax is the argmax of the scores.

    Args:
        mask_probs: ``(B, C, H, W)`` structure probabilities in ``[0, 1]``.
        method: ``"softmax"`` or ``"normalise"``.

    Returns:
        ``(B, C + 1, H, W)``, non-negative, summing to 1 over the channel axis.
    """
    if method not in CLASS_METHODS:
        raise ValueError(f"method must be one of {CLASS_METHODS}, got {method!r}")
    if mask_probs.ndim < 2:
        raise ValueError(f"mask_probs must be (B, C, ...), got {mask_probs.ndim}D")
    background = 1.0 - mask_probs.amax(dim=1, keepdim=True)
    scores = torch.cat([background, mask_probs], dim=1)
    if method == "softmax":
        return torch.softmax(scores, dim=1)
    return scores / scores.sum(dim=1, keepdim=True)


def normalised_entropy(class_probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy over the channel axis divided by ``log K``.

    Args:
        class_probs: ``(B, K, H, W)`` probabilities summing to 1 over ``K >= 2`` channels.

    Returns:
        ``(B, H, W)`` in ``[0, 1]``: 0 for a one-hot pixel, 1 for a uniform one.
    """
    classes = class_probs.shape[1]
    if classes < 2:
        raise ValueError(f"need at least 2 classes, got {classes}")
    entropy = -torch.special.xlogy(class_probs, class_probs).sum(dim=1)
    return (entropy / math.log(classes)).clamp(0.0, 1.0)


def entropy_floor(num_classes: int, method: ClassMethod = "softmax") -> float:
    """Smallest :func:`normalised_entropy` that :func:`class_probabilities` can produce (a certain pixel).

    0 for ``"normalise"``; for ``"softmax"`` the entropy of ``softmax([1, 0, .., 0])`` over ``num_classes``
    (0.915 for K = 4), because the scores it softmaxes lie in ``[0, 1]``.
    """
    if method == "normalise":
        return 0.0
    scores = torch.zeros(1, num_classes, 1, 1, dtype=torch.float64)
    scores[0, 0] = 1.0
    return float(normalised_entropy(torch.softmax(scores, dim=1)))


def rescaled_entropy(class_probs: torch.Tensor, method: ClassMethod = "softmax") -> torch.Tensor:
    """:func:`normalised_entropy` stretched so a certain pixel maps to 0 and a uniform one to 1.

    A monotone map of the paper's entropy (same ranking of pixels), ``(h - floor) / (1 - floor)`` with
    ``floor = entropy_floor(K, method)``, so heatmaps use the whole ``[0, 1]`` under either method.
    """
    floor = entropy_floor(class_probs.shape[1], method)
    return ((normalised_entropy(class_probs) - floor) / (1.0 - floor)).clamp(0.0, 1.0)


def structure_entropy(mask_probs: torch.Tensor) -> torch.Tensor:
    """Binary entropy in bits of each structure probability: ``(B, C, H, W)`` -> ``(B, C, H, W)`` in [0, 1].

    Both terms are kept: ``-(p log2 p + (1 - p) log2 (1 - p))``; 0 at ``p`` in ``{0, 1}``, 1 at ``p = 0.5``.
    """
    p = mask_probs.clamp(0.0, 1.0)
    entropy = -(torch.special.xlogy(p, p) + torch.special.xlogy(1.0 - p, 1.0 - p))
    return (entropy / math.log(2.0)).clamp(0.0, 1.0)


def fuse_step_means(
    step_means: torch.Tensor, *, fusion: Fusion = "exp", a: float | None = None
) -> torch.Tensor:
    """Weighted sum of the per-step sample means ``Xbar_t``.

    Args:
        step_means: ``(Ts, B, C, H, W)`` in ``[0, 1]``, in sampling order (last = cleanest).
        fusion: ``"exp"``: SpineSegDiff, weights of :func:`fusion_weights` (one weight per step);
            ``"uncertainty"``: Diff-UNet, per pixel and structure
            ``w_i = exp(sigmoid((i + 1) / Ts) * (1 - H_i))`` for fused step ``i = 0 .. Ts - 1``, ``H_i`` the
            :func:`structure_entropy` of ``Xbar_i``, normalised over the steps so that the result stays a
            probability.
        a: decay rate of the ``"exp"`` weights (``Ts / 2`` by default).

    Returns:
        ``(B, C, H, W)`` fused probabilities in ``[0, 1]``.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if step_means.ndim < 2:
        raise ValueError(f"step_means must be (Ts, B, ...), got {step_means.ndim}D")
    steps = step_means.shape[0]
    view = (steps,) + (1,) * (step_means.ndim - 1)
    if fusion == "exp":
        weights = fusion_weights(steps, a).to(device=step_means.device, dtype=step_means.dtype).view(view)
    else:
        position = torch.arange(1, steps + 1, device=step_means.device, dtype=step_means.dtype) / steps
        weights = torch.exp(torch.sigmoid(position).view(view) * (1.0 - structure_entropy(step_means)))
        weights = weights / weights.sum(dim=0, keepdim=True)
    return (weights * step_means).sum(dim=0).clamp(0.0, 1.0)


def _summarise(
    step_means: torch.Tensor,
    final_probs: torch.Tensor,
    *,
    fusion: Fusion,
    class_method: ClassMethod,
    fused_timesteps: tuple[int, ...],
    network_calls: int,
    encoder_calls: int,
) -> SegmentationResult:
    """Fuse ``(Ts, B, C, H, W)`` step means; ``final_probs`` is ``(B, S, C, H, W)`` from the last step."""
    steps, batch = step_means.shape[:2]
    fused = fuse_step_means(step_means, fusion=fusion)
    classes = class_probabilities(fused, class_method)
    step_classes = class_probabilities(step_means.flatten(0, 1), class_method)
    step_entropy = rescaled_entropy(step_classes, class_method).view(steps, batch, *step_means.shape[3:])
    return SegmentationResult(
        probabilities=fused,
        class_probabilities=classes,
        labels=classes.argmax(dim=1),
        uncertainty=step_entropy.amax(dim=0),
        structure_uncertainty=structure_entropy(step_means).amax(dim=0),
        variance=final_probs.var(dim=1, correction=0),
        fused_timesteps=fused_timesteps,
        num_network_calls=network_calls,
        num_image_encoder_calls=encoder_calls,
    )


def _standard_normal(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Noise drawn on the generator's device (so a CPU generator reproduces on any device), then moved."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def _check_arguments(
    image: torch.Tensor,
    *,
    scheduler: DDIMScheduler,
    num_samples: int,
    num_steps: int | None,
    fuse_steps: int,
    prediction_type: str,
    fusion: str,
    class_method: str,
    mask_channels: int,
    start_mask: torch.Tensor | None,
    start_timestep: int | None,
) -> list[int]:
    """Validate the sampler arguments, set the scheduler's timesteps and return them (descending)."""
    if image.ndim not in (4, 5):
        raise ValueError(f"image must be 4D (B, C, H, W) or 5D (B, C, D, H, W), but it is {image.ndim}D")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if prediction_type not in ("sample", "epsilon"):
        raise ValueError(f"prediction_type must be 'sample' or 'epsilon', got {prediction_type!r}")
    if scheduler.prediction_type != prediction_type:
        raise ValueError(
            f"the scheduler expects prediction_type {scheduler.prediction_type!r}, the sampler was told "
            f"{prediction_type!r}"
        )
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if class_method not in CLASS_METHODS:
        raise ValueError(f"class_method must be one of {CLASS_METHODS}, got {class_method!r}")
    if (start_mask is None) != (start_timestep is None):
        raise ValueError("start_mask and start_timestep go together: give both (refinement) or neither")
    if start_mask is not None:
        expected = (image.shape[0], mask_channels, *image.shape[2:])
        if tuple(start_mask.shape) != expected:
            raise ValueError(f"start_mask must have shape {expected}, got {tuple(start_mask.shape)}")
        if float(start_mask.min()) < 0.0 or float(start_mask.max()) > 1.0:
            raise ValueError("start_mask must hold probabilities in [0, 1]")
    if num_steps is None:
        num_steps = (
            DEFAULT_NUM_STEPS if start_timestep is None else min(DEFAULT_NUM_STEPS, start_timestep + 1)
        )
    scheduler.set_timesteps(num_steps, start_timestep=start_timestep)
    timesteps = scheduler.timesteps.tolist()
    if not 1 <= fuse_steps <= len(timesteps):
        raise ValueError(
            f"fuse_steps must lie in [1, {len(timesteps)}] (the number of steps), got {fuse_steps}"
        )
    return timesteps


def _starting_sample(
    noise: torch.Tensor,
    start_mask: torch.Tensor | None,
    timestep: int,
    scheduler: DDIMScheduler,
    repeats: int,
) -> torch.Tensor:
    """Pure noise, or the start mask (``(B, C, H, W)``, ``[0, 1]``) noised to ``timestep`` with ``noise``."""
    if start_mask is None:
        return noise
    x0 = (2.0 * start_mask.to(device=noise.device, dtype=noise.dtype) - 1.0).repeat_interleave(repeats, dim=0)
    steps = torch.full((noise.shape[0],), timestep, dtype=torch.int64)
    return add_noise(x0, noise, steps, scheduler.schedule)


def _encode(net: DenoisingNetwork, image: torch.Tensor) -> list[torch.Tensor] | None:
    return net.encode_image(image) if getattr(net, "has_image_encoder", False) else None  # type: ignore[attr-defined]


def _denoise_step(
    net: DenoisingNetwork,
    x: torch.Tensor,
    timestep: int,
    *,
    image: torch.Tensor,
    features: list[torch.Tensor] | None,
    scheduler: DDIMScheduler,
    prediction_type: str,
    generator: torch.Generator | None,
):
    """One network call and one DDIM step for every row of ``x`` at ``timestep``."""
    t = torch.full((x.shape[0],), timestep, dtype=torch.int64, device=x.device)
    output = net(x, t, image=image, image_features=features)
    model_output = logits_to_x0(output) if prediction_type == "sample" else output
    return scheduler.step(model_output, timestep, x, generator=generator)


@torch.no_grad()
def _walk_timesteps(
    net: DenoisingNetwork,
    x: torch.Tensor,
    image: torch.Tensor,
    timesteps: list[int],
    *,
    features: list[torch.Tensor] | None,
    scheduler: DDIMScheduler,
    num_samples: int,
    first_fused: int,
    prediction_type: Literal["sample", "epsilon"],
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Walk ``timesteps`` once from ``x`` (``B * S`` samples, image-major), one batched network call per step.

    Returns:
        ``(F, B, C, H, W)`` sample means of the ``x0`` probabilities of the steps from ``first_fused`` on, and
        the ``(B, S, C, H, W)`` per-sample probabilities of the last step (``x`` itself if nothing was fused).
    """
    batch = image.shape[0]
    images = image.repeat_interleave(num_samples, dim=0)
    step_means = []
    probs = x
    for index, timestep in enumerate(timesteps):
        step = _denoise_step(net, x, timestep, image=images, features=features, scheduler=scheduler,
                             prediction_type=prediction_type, generator=generator)
        x = step.prev_sample
        if index >= first_fused:
            probs = x0_to_probabilities(step.pred_original_sample).view(batch, num_samples, *x.shape[1:])
            step_means.append(probs.mean(dim=1))
    return torch.stack(step_means), probs


@torch.no_grad()
def sample_segmentation(
    net: DenoisingNetwork,
    image: torch.Tensor,
    *,
    scheduler: DDIMScheduler,
    num_samples: int = 15,
    num_steps: int | None = None,
    fuse_steps: int = 10,
    generator: torch.Generator | None = None,
    prediction_type: Literal["sample", "epsilon"] = "sample",
    fusion: Fusion = "exp",
    start_mask: torch.Tensor | None = None,
    start_timestep: int | None = None,
    class_method: ClassMethod = "softmax",
    mask_channels: int = 3,
) -> SegmentationResult:
    """Segment a batch of images with ``S`` DDIM samples each, all samples in one forward pass per step.

    The image encoder (when the network has one) runs once per call; its batch-``B`` features are passed to
    every step and broadcast over the ``B * S`` samples by the network. Starting from ``x_T ~ N(0, I)`` (or,
    for presegmentation refinement, from ``start_mask`` noised to ``start_timestep``), the scheduler's
    timesteps are walked once; the ``x0`` estimates of the last ``fuse_steps`` steps are averaged over the
    samples and fused (:func:`fuse_step_means`).

    Args:
        net: the denoiser (see :class:`DenoisingNetwork`).
        image: ``(B, image_channels, H, W)`` in ``[-1, 1]``, on the network's device (a slab network takes
            ``(B, image_channels, D, H, W)``, and the result's maps are slabs too).
        scheduler: a :class:`~spinesegdiff.diffusion.DDIMScheduler`; its timesteps are set here.
        num_samples: ``S``.
        num_steps: DDIM steps (network calls); by default 50 for a full run, and every timestep from
            ``start_timestep`` down to 0 (at most 50) for a refinement.
        fuse_steps: ``Ts``, number of final steps fused.
        generator: seeds the starting noise and the DDIM noise (``eta > 0``); same seed, same result.
        prediction_type: ``"sample"`` (the network returns ``x0`` logits) or ``"epsilon"`` (noise; the ``x0``
            estimate is the scheduler's ``pred_original_sample``); must match the scheduler.
        fusion: ``"exp"`` (SpineSegDiff) or ``"uncertainty"`` (Diff-UNet 2D).
        start_mask: ``(B, mask_channels, H, W)`` presegmentation probabilities in ``[0, 1]``, or ``None``.
        start_timestep: ``T_pre`` to noise ``start_mask`` to and start from; with ``start_mask`` only.
        class_method: how :func:`class_probabilities` builds the 4-class probabilities.
        mask_channels: channels of the mask (3).

    Returns:
        :class:`SegmentationResult`.
    """
    timesteps = _check_arguments(
        image,
        scheduler=scheduler,
        num_samples=num_samples,
        num_steps=num_steps,
        fuse_steps=fuse_steps,
        prediction_type=prediction_type,
        fusion=fusion,
        class_method=class_method,
        mask_channels=mask_channels,
        start_mask=start_mask,
        start_timestep=start_timestep,
    )
    samples = image.shape[0] * num_samples
    shape = (samples, mask_channels, *image.shape[2:])
    noise = _standard_normal(shape, generator, image.device, image.dtype)
    x = _starting_sample(noise, start_mask, timesteps[0], scheduler, num_samples)

    features = _encode(net, image)
    first_fused = len(timesteps) - fuse_steps
    step_means, probs = _walk_timesteps(net, x, image, timesteps, features=features, scheduler=scheduler,
                                        num_samples=num_samples, first_fused=first_fused,
                                        prediction_type=prediction_type, generator=generator)
    return _summarise(
        step_means,
        probs,
        fusion=fusion,
        class_method=class_method,
        fused_timesteps=tuple(timesteps[first_fused:]),
        network_calls=len(timesteps),
        encoder_calls=int(features is not None),
    )


@torch.no_grad()
def sample_reference_procedure(
    net: DenoisingNetwork,
    image: torch.Tensor,
    *,
    scheduler: DDIMScheduler,
    num_samples: int = 15,
    num_steps: int | None = None,
    fuse_steps: int = 10,
    generator: torch.Generator | None = None,
    prediction_type: Literal["sample", "epsilon"] = "sample",
    fusion: Fusion = "exp",
    start_mask: torch.Tensor | None = None,
    start_timestep: int | None = None,
    class_method: ClassMethod = "softmax",
    mask_channels: int = 3,
) -> SegmentationResult:
    """The authors' procedure, for benchmarking: ``S`` chains one after another, the IE once per chain.

    Takes the arguments of :func:`sample_segmentation` and fuses the last ``fuse_steps`` steps of the chains
    in the same way (unlike the reference code, which fused the first, noisiest steps), so the outputs are
    comparable. The starting noise is drawn exactly as in :func:`sample_segmentation` and chain ``s`` takes
    sample ``s`` of it: with ``eta = 0`` and a deterministic network both procedures give the same result;
    only the cost differs (``S * num_steps`` forward passes at batch ``B`` and ``S`` encoder passes).
    """
    timesteps = _check_arguments(
        image,
        scheduler=scheduler,
        num_samples=num_samples,
        num_steps=num_steps,
        fuse_steps=fuse_steps,
        prediction_type=prediction_type,
        fusion=fusion,
        class_method=class_method,
        mask_channels=mask_channels,
        start_mask=start_mask,
        start_timestep=start_timestep,
    )
    batch = image.shape[0]
    shape = (batch, num_samples, mask_channels, *image.shape[2:])
    noise = _standard_normal((batch * num_samples, *shape[2:]), generator, image.device, image.dtype).view(
        shape
    )
    first_fused = len(timesteps) - fuse_steps
    sums = torch.zeros((fuse_steps, batch, *shape[2:]), device=image.device, dtype=image.dtype)
    final = []
    network_calls = encoder_calls = 0
    for chain in range(num_samples):
        features = _encode(net, image)
        encoder_calls += int(features is not None)
        x = _starting_sample(noise[:, chain], start_mask, timesteps[0], scheduler, 1)
        for index, timestep in enumerate(timesteps):
            step = _denoise_step(net, x, timestep, image=image, features=features, scheduler=scheduler,
                                 prediction_type=prediction_type, generator=generator)
            network_calls += 1
            x = step.prev_sample
            if index >= first_fused:
                probs = x0_to_probabilities(step.pred_original_sample)
                sums[index - first_fused] += probs
        final.append(probs)
    return _summarise(
        sums / num_samples,
        torch.stack(final, dim=1),
        fusion=fusion,
        class_method=class_method,
        fused_timesteps=tuple(timesteps[first_fused:]),
        network_calls=network_calls,
        encoder_calls=encoder_calls,
    )
