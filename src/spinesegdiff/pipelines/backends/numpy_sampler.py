"""The multi-sample DDIM sampler of :mod:`spinesegdiff.pipelines.sampling` in NumPy, for the torch-free CPU path.

The same arithmetic as the PyTorch sampler (float32 arrays, float64 schedule values rounded to float32 where
PyTorch rounds them), so both give the same labels and the same uncertainty to float round-off: the noise is
drawn exactly as ``torch.randn`` draws it on the CPU from a generator seeded with ``manual_seed(seed)``
(:class:`TorchCompatibleNormal`), the timesteps are :class:`~spinesegdiff.diffusion.DDIMScheduler`'s, the fusion,
class probabilities and entropies are :mod:`~spinesegdiff.pipelines.sampling`'s. Only the deterministic DDIM
(``eta = 0``) is offered. Batch layout as there: the ``S`` samples of image ``b`` are rows ``b * S .. b * S + S - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from spinesegdiff.pipelines.results import SliceSegmentation

TWO_PI = 2.0 * math.pi
NetworkCall = Callable[[np.ndarray, int], np.ndarray]
"""``(x_t (N, C, H, W) float32, t) -> (N, C, H, W) float32`` network output (``x0`` logits or noise)."""


class TorchCompatibleNormal:
    """Standard normal float32 draws identical (to float round-off) to ``torch.randn`` on the CPU.

    ``torch.Generator().manual_seed(seed)`` seeds a 32-bit Mersenne Twister with ``seed mod 2**32`` (the
    standard ``init_genrand``); a float32 ``randn`` of ``n >= 16`` elements takes ``n`` uniforms
    ``(u32 & (2**24 - 1)) / 2**24``, turns each block of 16 into 16 normals by Box-Muller (``u1 = 1 - v[j]``,
    ``u2 = v[j + 8]``, ``r = sqrt(-2 log u1)``: ``r cos(2 pi u2)`` in slot ``j``, ``r sin(2 pi u2)`` in slot
    ``j + 8``), and when ``n`` is not a multiple of 16, redraws the last 16 uniforms and transforms them again.
    Successive calls continue the stream as successive ``randn`` calls on one generator do.
    """

    def __init__(self, seed: int) -> None:
        self._bits = np.random.MT19937(0)
        self._bits._legacy_seeding(int(seed) & 0xFFFFFFFF)

    def _uniforms(self, count: int) -> np.ndarray:
        raw = self._bits.random_raw(count).astype(np.uint32)
        return (raw & np.uint32((1 << 24) - 1)).astype(np.float32) * np.float32(1.0 / (1 << 24))

    @staticmethod
    def _box_muller(blocks: np.ndarray) -> np.ndarray:
        """``(k, 16)`` float32 uniforms -> ``(k, 16)`` float32 normals (float32 arithmetic, as PyTorch's)."""
        radius = np.log(1.0 - blocks[:, :8])
        radius *= -2.0
        np.sqrt(radius, out=radius)
        theta = blocks[:, 8:] * np.float32(TWO_PI)
        return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)], axis=1)

    def normal(self, shape: Sequence[int]) -> np.ndarray:
        """A ``shape`` float32 array of standard normal draws (at least 16 elements)."""
        count = int(np.prod(shape))
        if count < 16:
            raise ValueError(f"draws of fewer than 16 values are not reproduced, got shape {tuple(shape)}")
        values = self._uniforms(count)
        whole = count // 16 * 16
        out = np.empty(count, dtype=np.float32)
        out[:whole] = self._box_muller(values[:whole].reshape(-1, 16)).reshape(-1)
        if whole != count:
            out[count - 16:] = self._box_muller(self._uniforms(16)[None])[0]
        return out.reshape(shape)


def ddim_timesteps(num_steps: int, num_train_timesteps: int, start_timestep: int | None = None) -> list[int]:
    """:meth:`DDIMScheduler.set_timesteps`'s timesteps (descending), with its checks."""
    steps, total = int(num_steps), int(num_train_timesteps)
    if not 1 <= steps <= total:
        raise ValueError(f"num_inference_steps must lie in [1, {total}], got {num_steps}")
    if start_timestep is None:
        ratio = total // steps
        return [i * ratio for i in range(steps - 1, -1, -1)]
    start = int(start_timestep)
    if not 0 <= start < total or steps > start + 1:
        raise ValueError(f"start_timestep {start_timestep} does not fit {steps} steps of a {total}-step schedule")
    if steps == 1:
        return [start]
    return [(2 * k * start + steps - 1) // (2 * (steps - 1)) for k in range(steps - 1, -1, -1)]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` in float32, computed in place on a copy, without overflow warnings."""
    out = np.negative(logits, dtype=np.float32)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def fusion_weights(num_fuse_steps: int) -> np.ndarray:
    """:func:`~spinesegdiff.pipelines.sampling.fusion_weights` with ``a = Ts / 2``: ``(Ts,)`` float64."""
    steps = float(num_fuse_steps)
    t = np.arange(1, num_fuse_steps + 1, dtype=np.float64)
    weights = np.exp(-(steps / 2.0) * (steps - t) / steps)
    return weights / weights.sum()


def class_probabilities(mask_probs: np.ndarray) -> np.ndarray:
    """``(B, C, H, W)`` structure probabilities -> ``(B, C + 1, H, W)`` softmax of ``[1 - max p, p]``."""
    scores = np.concatenate([1.0 - mask_probs.max(axis=1, keepdims=True), mask_probs], axis=1)
    scores -= scores.max(axis=1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=1, keepdims=True)
    return scores


def _xlogx(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p), np.float32(0.0)).astype(np.float32)


def normalised_entropy(class_probs: np.ndarray) -> np.ndarray:
    """``(B, K, H, W)`` -> ``(B, H, W)`` entropy over ``K`` divided by ``log K``, in [0, 1]."""
    entropy = -_xlogx(class_probs).sum(axis=1)
    return np.clip(entropy / np.float32(math.log(class_probs.shape[1])), 0.0, 1.0)


def entropy_floor(num_classes: int) -> float:
    """The normalised entropy of ``softmax([1, 0, .., 0])``: a certain pixel under the softmax class method."""
    p = np.exp(np.eye(1, num_classes, dtype=np.float64)[0])
    p /= p.sum()
    return float(-(p * np.log(p)).sum() / math.log(num_classes))


def rescaled_entropy(class_probs: np.ndarray) -> np.ndarray:
    """:func:`normalised_entropy` stretched so a certain pixel is 0 and a uniform one 1."""
    floor = entropy_floor(class_probs.shape[1])
    return np.clip((normalised_entropy(class_probs) - np.float32(floor)) / np.float32(1.0 - floor), 0.0, 1.0)


def structure_entropy(mask_probs: np.ndarray) -> np.ndarray:
    """Binary entropy in bits of each probability: ``(..., C, H, W)`` -> same shape, in [0, 1]."""
    p = np.clip(mask_probs, 0.0, 1.0)
    entropy = -(_xlogx(p) + _xlogx(1.0 - p))
    return np.clip(entropy / np.float32(math.log(2.0)), 0.0, 1.0)


def fuse_step_means(step_means: np.ndarray, fusion: str) -> np.ndarray:
    """``(Ts, B, C, H, W)`` step means -> ``(B, C, H, W)`` fused probabilities (``exp`` or ``uncertainty``)."""
    steps = step_means.shape[0]
    view = (steps,) + (1,) * (step_means.ndim - 1)
    if fusion == "exp":
        weights = fusion_weights(steps).astype(np.float32).reshape(view)
    elif fusion == "uncertainty":
        position = np.arange(1, steps + 1, dtype=np.float32) / np.float32(steps)
        weights = np.exp(sigmoid(position).reshape(view) * (1.0 - structure_entropy(step_means)))
        weights /= weights.sum(axis=0, keepdims=True)
    else:
        raise ValueError(f"fusion must be 'exp' or 'uncertainty', got {fusion!r}")
    return np.clip((weights * step_means).sum(axis=0), 0.0, 1.0)


def summarise(step_means: np.ndarray, final_probs: np.ndarray, fusion: str, calls: int) -> SliceSegmentation:
    """Fuse ``(Ts, B, C, H, W)`` step means; ``final_probs`` ``(B, S, C, H, W)`` of the last step: the
    :class:`~spinesegdiff.pipelines.results.SliceSegmentation` of the ``B`` images (``calls`` network passes)."""
    steps, batch = step_means.shape[:2]
    fused = fuse_step_means(step_means, fusion)
    classes = class_probabilities(fused)
    step_classes = class_probabilities(step_means.reshape(steps * batch, *step_means.shape[2:]))
    step_entropy = rescaled_entropy(step_classes).reshape(steps, batch, *step_means.shape[-2:])
    return SliceSegmentation(
        probabilities=fused, class_probabilities=classes, labels=classes.argmax(axis=1).astype(np.uint8),
        uncertainty=step_entropy.max(axis=0), structure_uncertainty=structure_entropy(step_means).max(axis=0),
        variance=final_probs.var(axis=1, dtype=np.float32), network_calls=calls)


def sample_segmentation(network: NetworkCall, *, alphas_cumprod: np.ndarray, batch: int, num_samples: int,
                        timesteps: Sequence[int], fuse_steps: int, noise: np.ndarray, prediction_type: str,
                        fusion: str, start_mask: np.ndarray | None = None) -> SliceSegmentation:
    """Walk ``timesteps`` once for ``batch * num_samples`` samples, one network call per step; fuse the last
    ``fuse_steps`` steps (:func:`~spinesegdiff.pipelines.sampling.sample_segmentation` with ``eta = 0``).

    Args:
        network: the denoiser, with the images and their encoder features already bound (see :data:`NetworkCall`).
        alphas_cumprod: ``(T,)`` float64 ``abar_t`` of the model's schedule.
        noise: ``(B * S, C, H, W)`` float32 starting noise (:class:`TorchCompatibleNormal`).
        prediction_type: ``"sample"`` (``x0`` logits) or ``"epsilon"``.
        start_mask: ``(B, C, H, W)`` presegmentation probabilities in [0, 1] to noise to ``timesteps[0]``.
    """
    abar = [float(a) for a in alphas_cumprod]
    x = noise
    if start_mask is not None:
        a0 = abar[timesteps[0]]
        x0 = np.repeat(2.0 * start_mask.astype(np.float32) - 1.0, num_samples, axis=0)
        x = np.float32(math.sqrt(a0)) * x0 + np.float32(math.sqrt(1.0 - a0)) * noise
    first_fused = len(timesteps) - fuse_steps
    means, probs = [], x
    for index, t in enumerate(timesteps):
        output = network(x, t)
        a_t = abar[t]
        a_prev = abar[timesteps[index + 1]] if index + 1 < len(timesteps) else 1.0
        if prediction_type == "sample":
            x0 = sigmoid(output)
            x0 *= 2.0
            x0 -= 1.0
            epsilon = (x - a_t**0.5 * x0) / (1.0 - a_t) ** 0.5
        else:
            x0 = (x - (1.0 - a_t) ** 0.5 * output) / a_t**0.5
            epsilon = output
        np.clip(x0, -1.0, 1.0, out=x0)
        x = a_prev**0.5 * x0 + max(1.0 - a_prev, 0.0) ** 0.5 * epsilon
        if index >= first_fused:
            probs = np.clip((x0 + 1.0) / 2.0, 0.0, 1.0).reshape(batch, num_samples, *x.shape[1:])
            means.append(probs.mean(axis=1, dtype=np.float32))
    return summarise(np.stack(means), probs, fusion, len(timesteps))


def presegmentation_summary(class_probs: np.ndarray) -> SliceSegmentation:
    """A presegmenter's ``(N, 4, H, W)`` class probabilities taken as they are (``T_pre = 0``), as a
    :class:`~spinesegdiff.pipelines.results.SliceSegmentation`: the uncertainty is the normalised entropy of
    the class probabilities (a single prediction, no fusion), the variance 0, no network calls."""
    probs = np.asarray(class_probs, dtype=np.float32)
    structures = probs[:, 1:]
    return SliceSegmentation(
        probabilities=structures.copy(), class_probabilities=probs.copy(),
        labels=probs.argmax(axis=1).astype(np.uint8), uncertainty=normalised_entropy(probs),
        structure_uncertainty=structure_entropy(structures), variance=np.zeros_like(structures),
        network_calls=0)
