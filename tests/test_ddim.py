"""DDIM scheduler and noise schedules, checked against diffusers and against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from spinesegdiff.diffusion import DDIMScheduler, add_noise, make_schedule

SHAPE = (2, 3, 4, 4)


def _fake_model_output(sample: torch.Tensor, timestep: int, prediction_type: str) -> torch.Tensor:
    """A fixed, sample-dependent stand-in for a network: deterministic in (sample, timestep)."""
    base = torch.linspace(-1.5, 1.5, sample.numel(), dtype=sample.dtype).view(sample.shape)
    if prediction_type == "sample":
        return torch.tanh(base + 0.3 * sample + timestep / 1000.0)
    return 0.5 * base - 0.2 * sample + math.sin(timestep / 100.0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("prediction_type", ["sample", "epsilon"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_trajectory_matches_diffusers(kind: str, prediction_type: str, eta: float) -> None:
    diffusers = pytest.importorskip("diffusers")
    beta_schedule = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[kind]
    theirs = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule=beta_schedule,
        clip_sample=True,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type=prediction_type,
        timestep_spacing="leading",
    )
    ours = DDIMScheduler(make_schedule(kind), prediction_type=prediction_type, eta=eta, clip_sample=True)
    theirs.set_timesteps(20)
    ours.set_timesteps(20)
    assert torch.equal(ours.timesteps, theirs.timesteps.cpu())

    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    x_ours, x_theirs = start.clone(), start.clone()
    gen_ours, gen_theirs = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for t in ours.timesteps.tolist():
        out_ours = ours.step(_fake_model_output(x_ours, t, prediction_type), t, x_ours, generator=gen_ours)
        out_theirs = theirs.step(
            _fake_model_output(x_theirs, t, prediction_type), t, x_theirs, eta=eta, generator=gen_theirs
        )
        torch.testing.assert_close(
            out_ours.pred_original_sample, out_theirs.pred_original_sample, atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(out_ours.prev_sample, out_theirs.prev_sample, atol=1e-4, rtol=1e-4)
        x_ours, x_theirs = out_ours.prev_sample, out_theirs.prev_sample
    # the trajectory really moved: the final sample is far from the start
    assert (x_ours - start).abs().max() > 0.5


def test_linear_and_cosine_alphas_match_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    for kind, name in (("linear", "linear"), ("cosine", "squaredcos_cap_v2")):
        theirs = diffusers.DDIMScheduler(beta_schedule=name)
        ours = make_schedule(kind)
        torch.testing.assert_close(ours.betas.float(), theirs.betas, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, atol=1e-6, rtol=1e-4)


def test_schedule_values_by_hand() -> None:
    linear = make_schedule("linear", num_train_timesteps=5, beta_start=0.1, beta_end=0.5)
    assert linear.betas.dtype == torch.float64
    torch.testing.assert_close(linear.betas, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64))
    torch.testing.assert_close(linear.alphas_cumprod[1], torch.tensor(0.9 * 0.8, dtype=torch.float64))
    cosine = make_schedule("cosine", num_train_timesteps=4)

    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    assert cosine.betas[0].item() == pytest.approx(1 - abar(0.25) / abar(0.0), rel=1e-12)
    assert cosine.betas[-1].item() == pytest.approx(0.999)  # clipped: abar(1) = 0


def test_add_noise_by_hand() -> None:
    schedule = make_schedule("linear", num_train_timesteps=10, beta_start=0.1, beta_end=0.1)
    x0 = torch.tensor([[[[1.0]]], [[[-1.0]]]])
    noise = torch.tensor([[[[0.5]]], [[[2.0]]]])
    noisy = add_noise(x0, noise, torch.tensor([0, 2]), schedule)
    abar0, abar2 = 0.9, 0.9**3
    expected = torch.tensor(
        [
            math.sqrt(abar0) * 1.0 + math.sqrt(1 - abar0) * 0.5,
            math.sqrt(abar2) * -1.0 + math.sqrt(1 - abar2) * 2.0,
        ]
    ).view(2, 1, 1, 1)
    torch.testing.assert_close(noisy, expected)
    assert noisy.dtype == x0.dtype


def test_add_noise_rejects_bad_timesteps() -> None:
    schedule = make_schedule("linear", num_train_timesteps=10)
    x = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match="must lie in"):
        add_noise(x, x, torch.tensor([0, 10]), schedule)
    with pytest.raises(ValueError, match="shape"):
        add_noise(x, x, torch.tensor([0]), schedule)
    with pytest.raises(ValueError, match="integer"):
        add_noise(x, x, torch.tensor([0.0, 1.0]), schedule)


def test_set_timesteps_leading_spacing() -> None:
    scheduler = DDIMScheduler(make_schedule("linear"))
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert scheduler.timesteps.dtype == torch.int64
    scheduler.set_timesteps(3)
    assert scheduler.timesteps.tolist() == [666, 333, 0]
    assert scheduler.previous_timestep(333) == 0
    assert scheduler.previous_timestep(0) == -1


def test_set_timesteps_from_start_timestep() -> None:
    scheduler = DDIMScheduler(make_schedule("cosine"))
    scheduler.set_timesteps(4, start_timestep=30)
    assert scheduler.timesteps.tolist() == [30, 20, 10, 0]
    scheduler.set_timesteps(5, start_timestep=30)
    assert scheduler.timesteps.tolist() == [30, 23, 15, 8, 0]  # 22.5 and 7.5 round half up
    scheduler.set_timesteps(31, start_timestep=30)
    assert scheduler.timesteps.tolist() == list(range(30, -1, -1))
    scheduler.set_timesteps(1, start_timestep=30)
    assert scheduler.timesteps.tolist() == [30]
    with pytest.raises(ValueError, match="cannot exceed start_timestep"):
        scheduler.set_timesteps(32, start_timestep=30)
    with pytest.raises(ValueError, match="start_timestep must lie"):
        scheduler.set_timesteps(5, start_timestep=1000)


def test_step_before_set_timesteps_raises() -> None:
    scheduler = DDIMScheduler(make_schedule("linear"))
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 999, x)
    with pytest.raises(ValueError, match="set_timesteps"):
        _ = scheduler.timesteps


def test_step_rejects_unscheduled_timestep_and_bad_arguments() -> None:
    scheduler = DDIMScheduler(make_schedule("linear"))
    scheduler.set_timesteps(10)
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="not one of the scheduled"):
        scheduler.step(x, 950, x)
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(torch.zeros(1, 3, 2, 1), 900, x)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(1001)
    with pytest.raises(ValueError, match="prediction_type"):
        DDIMScheduler(make_schedule("linear"), prediction_type="v_prediction")  # type: ignore[arg-type]


def test_final_step_returns_the_clean_estimate() -> None:
    scheduler = DDIMScheduler(make_schedule("linear"), prediction_type="sample")
    scheduler.set_timesteps(10)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    estimate = torch.full_like(x, 0.25)
    out = scheduler.step(estimate, 0, x)  # previous abar is 1: x_prev = x0_hat
    torch.testing.assert_close(out.prev_sample, estimate)


def test_eta_noise_follows_the_generator() -> None:
    scheduler = DDIMScheduler(make_schedule("linear"), eta=1.0)
    scheduler.set_timesteps(10)
    x = torch.zeros(1, 3, 4, 4)
    first = scheduler.step(x, 500, x, generator=torch.Generator().manual_seed(1)).prev_sample
    again = scheduler.step(x, 500, x, generator=torch.Generator().manual_seed(1)).prev_sample
    other = scheduler.step(x, 500, x, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_step_on_cuda_matches_cpu() -> None:
    scheduler = DDIMScheduler(make_schedule("linear"), eta=0.5, prediction_type="epsilon")
    scheduler.set_timesteps(10)
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out_cpu = scheduler.step(0.3 * x, 500, x, generator=torch.Generator().manual_seed(5))
    out_gpu = scheduler.step(0.3 * x.cuda(), 500, x.cuda(), generator=torch.Generator().manual_seed(5))
    assert out_gpu.prev_sample.is_cuda
    torch.testing.assert_close(out_gpu.prev_sample.cpu(), out_cpu.prev_sample, atol=1e-5, rtol=1e-5)


def test_scheduler_config_round_trip_and_reading_saved_settings() -> None:
    from spinesegdiff.diffusion import SchedulerConfig

    cosine = SchedulerConfig(schedule="cosine", num_train_timesteps=50)
    assert SchedulerConfig.from_dict(cosine.to_dict()) == cosine
    torch.testing.assert_close(cosine.noise_schedule().betas, make_schedule("cosine", 50).betas)
    assert SchedulerConfig.from_train_settings({"schedule": "cosine", "num_train_timesteps": 50}) == cosine
    assert SchedulerConfig.from_train_settings({"scheduler": cosine.to_dict(), "folds": {}}) == cosine
    assert SchedulerConfig.from_train_settings(None) == SchedulerConfig(schedule="linear", num_train_timesteps=1000)
    with pytest.raises(ValueError, match="name no noise schedule"):
        SchedulerConfig.from_train_settings({"epochs": 3})
    with pytest.raises(ValueError, match="unknown scheduler settings: beta_end"):
        SchedulerConfig.from_dict({"schedule": "linear", "beta_end": 0.02})
    with pytest.raises(ValueError, match="schedule must be one of"):
        SchedulerConfig(schedule="quadratic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_train_timesteps must be a positive integer"):
        SchedulerConfig(num_train_timesteps=0)
