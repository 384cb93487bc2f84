"""Multi-sample DDIM segmentation, fusion and entropy, with fake networks that count their calls."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from spinesegdiff.diffusion import DDIMScheduler, add_noise, make_schedule
from spinesegdiff.models import build_model, preset_config
from spinesegdiff.models.blocks import repeat_to_batch
from spinesegdiff.pipelines.sampling import (
    class_probabilities,
    entropy_floor,
    fuse_step_means,
    fusion_weights,
    normalised_entropy,
    rescaled_entropy,
    sample_reference_procedure,
    sample_segmentation,
    structure_entropy,
)

SIZE = 8


def _pattern(batch: int) -> torch.Tensor:
    """(B, 3, 8, 8) logits: SC in the left columns, VB in the middle, IVD on the right, nothing at the edges."""
    logits = torch.full((batch, 3, SIZE, SIZE), -4.0)
    logits[:, 0, 1:7, 0:2] = 4.0
    logits[:, 1, 1:7, 3:5] = 4.0
    logits[:, 2, 1:7, 6:8] = 4.0
    return logits


class FakeDualNet:
    """A stand-in for SpineSegDiffNet: image encoder + denoiser whose x0 logits depend on x_t and the image."""

    has_image_encoder = True

    def __init__(self) -> None:
        self.encoder_calls = 0
        self.calls: list[tuple[int, list[int], torch.Tensor]] = []

    def encode_image(self, image: torch.Tensor) -> list[torch.Tensor]:
        self.encoder_calls += 1
        return [image.mean(dim=(1, 2, 3)).view(-1, 1, 1, 1).expand(-1, 3, SIZE, SIZE)]

    def __call__(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        *,
        image: torch.Tensor,
        image_features: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        assert image_features is not None
        self.calls.append((x_t.shape[0], t.tolist(), x_t.clone()))
        batch = x_t.shape[0]
        shift = repeat_to_batch(image_features[0], batch, "features")
        return repeat_to_batch(_pattern(image.shape[0]), batch, "pattern") + 0.5 * x_t + shift


class StepNet:
    """Predicts the same logit everywhere, a known function of the timestep; no image encoder."""

    has_image_encoder = False

    def __init__(self, logit_of_t: Callable[[int], float]) -> None:
        self.logit_of_t = logit_of_t

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, *, image: torch.Tensor, image_features: None
    ) -> torch.Tensor:
        return torch.full_like(x_t, float(self.logit_of_t(int(t[0]))))


def _image(batch: int = 2) -> torch.Tensor:
    return torch.linspace(-1, 1, batch * SIZE * SIZE).view(batch, 1, SIZE, SIZE)


def _scheduler(eta: float = 0.0, kind: str = "linear", prediction_type: str = "sample") -> DDIMScheduler:
    return DDIMScheduler(make_schedule(kind), prediction_type=prediction_type, eta=eta)


def test_fusion_weights_by_hand() -> None:
    weights = fusion_weights(3, a=1.5)
    # w_t = exp(-1.5 (3 - t) / 3), t = 1, 2, 3
    raw = [math.exp(-1.0), math.exp(-0.5), math.exp(0.0)]
    expected = torch.tensor([value / sum(raw) for value in raw], dtype=torch.float64)
    torch.testing.assert_close(weights, expected)
    assert fusion_weights(3).tolist() == weights.tolist()  # a = Ts / 2 by default
    assert fusion_weights(10)[-1] == fusion_weights(10).max()
    torch.testing.assert_close(fusion_weights(4, a=0.0), torch.full((4,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 1"):
        fusion_weights(0)
    with pytest.raises(ValueError, match="non-negative"):
        fusion_weights(3, a=-1.0)


def test_entropy_by_hand_on_one_pixel() -> None:
    uniform = torch.full((1, 4, 1, 1), 0.25)
    certain = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 4, 1, 1)
    assert normalised_entropy(uniform).shape == (1, 1, 1)
    assert normalised_entropy(uniform).item() == pytest.approx(1.0)
    assert normalised_entropy(certain).item() == pytest.approx(0.0)
    half = torch.tensor([0.5, 0.5, 0.0, 0.0]).view(1, 4, 1, 1)
    assert normalised_entropy(half).item() == pytest.approx(math.log(2) / math.log(4))
    binary = structure_entropy(torch.tensor([0.5, 0.0, 1.0]).view(1, 3, 1, 1))
    torch.testing.assert_close(binary.flatten(), torch.tensor([1.0, 0.0, 0.0]))
    p = 0.2
    expected = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    assert structure_entropy(torch.tensor([p]).view(1, 1, 1, 1)).item() == pytest.approx(expected, rel=1e-6)


def test_class_probabilities_by_hand() -> None:
    probs = torch.tensor([0.9, 0.2, 0.0]).view(1, 3, 1, 1)
    scores = [0.1, 0.9, 0.2, 0.0]  # background = 1 - max
    softmax = class_probabilities(probs)
    exps = [math.exp(s) for s in scores]
    torch.testing.assert_close(softmax.flatten(), torch.tensor([e / sum(exps) for e in exps]))
    normalised = class_probabilities(probs, method="normalise")
    torch.testing.assert_close(normalised.flatten(), torch.tensor([s / 1.2 for s in scores]))
    # a certain pixel: the paper's softmax keeps entropy 0.915, the normalised form reaches 0
    certain = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert normalised_entropy(class_probabilities(certain)).item() == pytest.approx(0.9148, abs=1e-4)
    assert normalised_entropy(class_probabilities(certain, "normalise")).item() == pytest.approx(0.0)
    assert entropy_floor(4) == pytest.approx(0.9148, abs=1e-4) and entropy_floor(4, "normalise") == 0.0
    assert rescaled_entropy(class_probabilities(certain)).item() == pytest.approx(0.0, abs=1e-5)
    uniform_scores = torch.full((1, 3, 1, 1), 0.5)
    assert rescaled_entropy(class_probabilities(uniform_scores)).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="method"):
        class_probabilities(probs, method="max")  # type: ignore[arg-type]


def test_uncertainty_fusion_by_hand() -> None:
    means = torch.tensor([0.5, 1.0]).view(2, 1, 1, 1, 1)  # step 0: maximally unsure, step 1: certain
    w0 = math.exp(1 / (1 + math.exp(-0.5)) * (1 - 1.0))
    w1 = math.exp(1 / (1 + math.exp(-1.0)) * (1 - 0.0))
    expected = (w0 * 0.5 + w1 * 1.0) / (w0 + w1)
    assert fuse_step_means(means, fusion="uncertainty").item() == pytest.approx(expected, rel=1e-6)
    exp_weights = fusion_weights(2)
    assert fuse_step_means(means).item() == pytest.approx(float(exp_weights[0] * 0.5 + exp_weights[1]))


def test_result_shapes_ranges_and_labels() -> None:
    net = FakeDualNet()
    result = sample_segmentation(
        net,
        _image(2),
        scheduler=_scheduler(),
        num_samples=3,
        num_steps=5,
        fuse_steps=3,
        generator=torch.Generator(),
    )
    assert result.probabilities.shape == (2, 3, SIZE, SIZE)
    assert result.class_probabilities.shape == (2, 4, SIZE, SIZE)
    torch.testing.assert_close(result.class_probabilities.sum(dim=1), torch.ones(2, SIZE, SIZE))
    assert result.labels.shape == (2, SIZE, SIZE) and result.labels.dtype == torch.int64
    assert result.uncertainty.shape == (2, SIZE, SIZE)
    assert result.structure_uncertainty.shape == (2, 3, SIZE, SIZE)
    assert result.variance.shape == (2, 3, SIZE, SIZE)
    for tensor in (result.probabilities, result.uncertainty, result.structure_uncertainty):
        assert tensor.min() >= 0.0 and tensor.max() <= 1.0
    assert result.variance.min() >= 0.0 and result.variance.max() > 0.0  # the samples differ
    # the fake network draws SC, VB and IVD stripes and nothing at the edges: background wins there
    assert set(result.labels.unique().tolist()) == {0, 1, 2, 3}
    assert (result.labels[:, 0, :] == 0).all()
    assert (result.labels[:, 3, 0:2] == 1).all() and (result.labels[:, 3, 3:5] == 2).all()
    assert (result.labels[:, 3, 6:8] == 3).all()
    assert result.fused_timesteps == (400, 200, 0)


def test_image_encoder_once_and_one_batched_call_per_step() -> None:
    net = FakeDualNet()
    scheduler = _scheduler()
    result = sample_segmentation(
        net, _image(2), scheduler=scheduler, num_samples=3, num_steps=6, fuse_steps=2
    )
    assert net.encoder_calls == 1
    assert len(net.calls) == 6 == result.num_network_calls
    assert result.num_image_encoder_calls == 1
    assert all(batch == 2 * 3 for batch, _, _ in net.calls)
    assert [t[0] for _, t, _ in net.calls] == scheduler.timesteps.tolist()
    assert all(len(set(t)) == 1 for _, t, _ in net.calls)


def test_start_timestep_runs_only_the_refinement_steps() -> None:
    net = FakeDualNet()
    scheduler = _scheduler(kind="cosine")
    start_mask = torch.sigmoid(_pattern(2))
    result = sample_segmentation(
        net,
        _image(2),
        scheduler=scheduler,
        num_samples=2,
        num_steps=4,
        fuse_steps=4,
        start_mask=start_mask,
        start_timestep=30,
        generator=torch.Generator().manual_seed(7),
    )
    assert result.num_network_calls == 4 == len(net.calls)
    assert [t[0] for _, t, _ in net.calls] == [30, 20, 10, 0]
    assert net.encoder_calls == 1
    # the first input is the start mask noised to step 30 with the generator's first draw
    noise = torch.randn((4, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(7))
    x0 = (2 * start_mask - 1).repeat_interleave(2, dim=0)
    expected = add_noise(x0, noise, torch.full((4,), 30), scheduler.schedule)
    torch.testing.assert_close(net.calls[0][2], expected)


def test_default_full_run_takes_fifty_steps() -> None:
    net = FakeDualNet()
    result = sample_segmentation(net, _image(1), scheduler=_scheduler(), num_samples=1)
    assert result.num_network_calls == 50 == len(net.calls)
    assert net.calls[0][1] == [980] and result.fused_timesteps == tuple(range(180, -1, -20))


def test_default_refinement_steps_visit_every_timestep_from_the_start() -> None:
    net = FakeDualNet()
    result = sample_segmentation(
        net,
        _image(1),
        scheduler=_scheduler(kind="cosine"),
        num_samples=1,
        fuse_steps=3,
        start_mask=torch.sigmoid(_pattern(1)),
        start_timestep=5,
    )
    assert [t[0] for _, t, _ in net.calls] == [5, 4, 3, 2, 1, 0]
    assert result.num_network_calls == 6
    assert result.fused_timesteps == (2, 1, 0)


def test_fuses_the_last_steps_with_exponential_weights() -> None:
    # the x0 estimate at timestep t is sigmoid(logit(t)) everywhere, so Xbar_t is known exactly
    def logit(t: int) -> float:
        return (t - 300) / 100.0

    scheduler = _scheduler()
    result = sample_segmentation(
        StepNet(logit), _image(1), scheduler=scheduler, num_samples=2, num_steps=10, fuse_steps=3
    )
    fused_steps = scheduler.timesteps.tolist()[-3:]
    assert fused_steps == [200, 100, 0]
    weights = fusion_weights(3)
    expected = sum(float(w) / (1 + math.exp(-logit(t))) for w, t in zip(weights, fused_steps, strict=True))
    torch.testing.assert_close(result.probabilities, torch.full((1, 3, SIZE, SIZE), expected))
    # uncertainty: max over the fused steps of the class entropy of Xbar_t, stretched from [floor, 1] to [0, 1]
    floor = normalised_entropy(torch.softmax(torch.tensor([[[[1.0]], [[0.0]], [[0.0]], [[0.0]]]]), dim=1)).item()
    entropies = [
        (normalised_entropy(
            class_probabilities(torch.full((1, 3, 1, 1), 1 / (1 + math.exp(-logit(t)))))
        ).item() - floor) / (1 - floor)
        for t in fused_steps
    ]
    torch.testing.assert_close(result.uncertainty, torch.full((1, SIZE, SIZE), max(entropies)))
    assert result.num_image_encoder_calls == 0
    torch.testing.assert_close(result.variance, torch.zeros(1, 3, SIZE, SIZE))  # identical samples


def test_epsilon_prediction_uses_the_schedulers_x0_estimate() -> None:
    scheduler = _scheduler(prediction_type="epsilon")
    abar = scheduler.schedule.alphas_cumprod
    x0_true = 2 * torch.sigmoid(_pattern(1)) - 1

    def oracle(
        x_t: torch.Tensor, t: torch.Tensor, *, image: torch.Tensor, image_features: None
    ) -> torch.Tensor:
        a = float(abar[int(t[0])])
        return (x_t - math.sqrt(a) * x0_true) / math.sqrt(1 - a)  # the exact noise: x0_hat = x0_true

    result = sample_segmentation(
        oracle,
        _image(1),
        scheduler=scheduler,
        num_samples=1,
        num_steps=5,
        fuse_steps=2,
        prediction_type="epsilon",
    )
    torch.testing.assert_close(result.probabilities, torch.sigmoid(_pattern(1)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_deterministic_per_seed(eta: float) -> None:
    def run(seed: int) -> torch.Tensor:
        return sample_segmentation(
            FakeDualNet(),
            _image(1),
            scheduler=_scheduler(eta=eta),
            num_samples=2,
            num_steps=4,
            fuse_steps=2,
            generator=torch.Generator().manual_seed(seed),
        ).probabilities

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_reference_procedure_matches_batched_sampling_at_eta_zero() -> None:
    kwargs = {"num_samples": 3, "num_steps": 5, "fuse_steps": 3}
    batched_net, reference_net = FakeDualNet(), FakeDualNet()
    batched = sample_segmentation(
        batched_net, _image(2), scheduler=_scheduler(), generator=torch.Generator().manual_seed(4), **kwargs
    )
    reference = sample_reference_procedure(
        reference_net, _image(2), scheduler=_scheduler(), generator=torch.Generator().manual_seed(4), **kwargs
    )
    assert reference.num_network_calls == 3 * 5 == len(reference_net.calls)
    assert reference.num_image_encoder_calls == 3 == reference_net.encoder_calls
    assert all(batch == 2 for batch, _, _ in reference_net.calls)
    for name in ("probabilities", "uncertainty", "structure_uncertainty", "variance"):
        torch.testing.assert_close(getattr(reference, name), getattr(batched, name), atol=1e-5, rtol=1e-5)
    assert torch.equal(reference.labels, batched.labels)


def test_diffunet_fusion_differs_from_exponential_fusion() -> None:
    kwargs = {"num_samples": 2, "num_steps": 5, "fuse_steps": 4}
    exp = sample_segmentation(FakeDualNet(), _image(1), scheduler=_scheduler(), fusion="exp", **kwargs)
    unc = sample_segmentation(
        FakeDualNet(), _image(1), scheduler=_scheduler(), fusion="uncertainty", **kwargs
    )
    assert not torch.allclose(exp.probabilities, unc.probabilities)
    assert unc.probabilities.min() >= 0 and unc.probabilities.max() <= 1


def test_real_tiny_network_encodes_the_image_once() -> None:
    torch.manual_seed(0)
    net = build_model(preset_config("tiny")).eval()
    calls = {"encode": 0, "forward": 0}
    encode = net.encode_image

    grad_enabled = []

    def counting_encode(image: torch.Tensor) -> list[torch.Tensor]:
        calls["encode"] += 1
        grad_enabled.append(torch.is_grad_enabled())
        return encode(image)

    net.encode_image = counting_encode  # type: ignore[method-assign]
    net.register_forward_pre_hook(lambda module, args: calls.__setitem__("forward", calls["forward"] + 1))
    image = torch.rand(1, 1, 16, 16) * 2 - 1
    result = sample_segmentation(net, image, scheduler=_scheduler(), num_samples=2, num_steps=3, fuse_steps=2)
    assert calls == {"encode": 1, "forward": 3}
    assert result.labels.shape == (1, 16, 16)
    assert net.image_encoder is not None
    assert grad_enabled == [False], "the sampler records no autograd graph, the image encoder's pass included"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prediction_type": "epsilon"}, "the scheduler expects"),
        ({"fuse_steps": 6}, "fuse_steps must lie"),
        ({"fusion": "mean"}, "fusion must be one of"),
        ({"num_samples": 0}, "num_samples"),
        ({"start_timestep": 30}, "go together"),
        ({"start_mask": torch.zeros(1, 3, SIZE, SIZE)}, "go together"),
        ({"start_mask": torch.zeros(1, 2, SIZE, SIZE), "start_timestep": 30}, "start_mask must have shape"),
        ({"start_mask": torch.full((1, 3, SIZE, SIZE), 2.0), "start_timestep": 30}, r"\[0, 1\]"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {"scheduler": _scheduler(), "num_samples": 2, "num_steps": 5, "fuse_steps": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        sample_segmentation(FakeDualNet(), _image(1), **arguments)
