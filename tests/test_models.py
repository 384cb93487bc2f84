"""Networks and their configuration, on tiny presets (16 x 16 and 32 x 32 inputs)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from spinesegdiff.models import (
    DIFFUSION_VARIANTS,
    SLAB_VARIANTS,
    VARIANTS,
    IISDMNet,
    ModelConfig,
    SpineSegDiffNet,
    build_model,
    count_parameters,
    model_prediction_type,
    preset_config,
)

SLICE_DIFFUSION_VARIANTS = [v for v in DIFFUSION_VARIANTS if v not in SLAB_VARIANTS]  # slab networks: test_diffunet3d


def _inputs(batch: int, samples: int = 1, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 1, size, size, generator=generator) * 2 - 1
    x_t = torch.randn(batch * samples, 3, size, size, generator=generator)
    t = torch.arange(batch * samples) * 7
    return image, x_t, t


@pytest.mark.parametrize("variant", SLICE_DIFFUSION_VARIANTS)
@pytest.mark.parametrize("size", [16, 32])
def test_output_shape_for_every_variant(variant: str, size: int) -> None:
    torch.manual_seed(0)
    net = build_model(preset_config("tiny", variant))
    image, x_t, t = _inputs(2, size=size)
    out = net(x_t, t, image=image)
    assert out.shape == (2, 3, size, size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_variants_build_the_right_network() -> None:
    assert isinstance(build_model(preset_config("tiny", "spinesegdiff")), SpineSegDiffNet)
    assert isinstance(build_model(preset_config("tiny", "diffunet2d")), SpineSegDiffNet)
    assert isinstance(build_model(preset_config("tiny", "iisdm")), IISDMNet)
    assert build_model(preset_config("tiny", "spinesegdiff")).has_image_encoder
    assert not build_model(preset_config("tiny", "spinesegdiff_no_ie")).has_image_encoder
    assert not build_model(preset_config("tiny", "iisdm")).has_image_encoder
    assert model_prediction_type(preset_config("tiny", "iisdm")) == "epsilon"
    for variant in ("spinesegdiff", "spinesegdiff_no_ie", "diffunet2d"):
        assert model_prediction_type(preset_config("tiny", variant)) == "sample"


def test_image_encoder_feature_shapes_and_parameter_split() -> None:
    config = preset_config("tiny")
    net = build_model(config)
    features = net.encode_image(torch.zeros(2, 1, 32, 32))
    assert [tuple(f.shape) for f in features] == [
        (2, 8, 32, 32),
        (2, 8, 16, 16),
        (2, 16, 8, 8),
        (2, 16, 4, 4),
    ]
    no_ie = build_model(preset_config("tiny", "spinesegdiff_no_ie"))
    assert count_parameters(net) - count_parameters(no_ie) == count_parameters(net.image_encoder)
    with pytest.raises(RuntimeError, match="no image encoder"):
        no_ie.encode_image(torch.zeros(1, 1, 16, 16))


def test_precomputed_features_equal_internal_encoding_and_broadcast_over_samples() -> None:
    torch.manual_seed(0)
    net = build_model(preset_config("tiny")).eval()
    samples = 3
    image, x_t, t = _inputs(2, samples=samples)
    with torch.no_grad():
        features = net.encode_image(image)
        # features at batch B, x_t at batch B * S: image b pairs with rows b * S .. b * S + S - 1
        broadcast = net(x_t, t, image=image, image_features=features)
        repeated = [f.repeat_interleave(samples, dim=0) for f in features]
        explicit = net(x_t, t, image=image.repeat_interleave(samples, dim=0), image_features=repeated)
        internal = net(x_t, t, image=image)
    torch.testing.assert_close(broadcast, explicit)
    torch.testing.assert_close(broadcast, internal)


def test_image_encoder_features_change_the_output() -> None:
    torch.manual_seed(0)
    net = build_model(preset_config("tiny")).eval()
    image, x_t, t = _inputs(1)
    with torch.no_grad():
        features = net.encode_image(image)
        zeroed = [torch.zeros_like(f) for f in features]
        assert not torch.allclose(
            net(x_t, t, image=image, image_features=features), net(x_t, t, image, zeroed)
        )


def test_timestep_and_image_both_matter() -> None:
    torch.manual_seed(0)
    net = build_model(preset_config("tiny", "spinesegdiff_no_ie")).eval()
    image, x_t, _ = _inputs(1)
    with torch.no_grad():
        base = net(x_t, torch.tensor([10]), image=image)
        assert not torch.allclose(base, net(x_t, torch.tensor([900]), image=image))
        assert not torch.allclose(base, net(x_t, torch.tensor([10]), image=-image))
        torch.testing.assert_close(base, net(x_t, 10, image=image))  # a scalar timestep is broadcast


def test_iisdm_is_zero_initialised_and_trainable() -> None:
    torch.manual_seed(0)
    net = build_model(preset_config("tiny", "iisdm"))
    image, x_t, t = _inputs(2)
    out = net(x_t, t, image=image)
    assert torch.count_nonzero(out) == 0  # zero-initialised output convolution, as guided diffusion
    out.square().add(out).sum().backward()
    assert net.out[-1].weight.grad is not None and net.out[-1].weight.grad.abs().sum() > 0


def test_iisdm_noise_skip_starts_at_the_identity_and_trains() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(preset_config("tiny", "iisdm"), noise_skip=True)
    net = build_model(config)
    image, x_t, t = _inputs(2)
    out = net(x_t, t, image=image)
    torch.testing.assert_close(out, x_t)  # a fresh network predicts eps_hat = x_t, i.e. x0_hat = 0
    out.square().sum().backward()
    assert net.noise_skip.weight.grad.abs().sum() > 0 and net.out[-1].weight.grad.abs().sum() > 0
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "noise_skip"}).noise_skip is False
    with pytest.raises(ValueError, match="noise_skip applies"):
        dataclasses.replace(preset_config("tiny"), noise_skip=True)


@pytest.mark.parametrize("variant", SLICE_DIFFUSION_VARIANTS)
def test_bad_spatial_size_raises(variant: str) -> None:
    net = build_model(preset_config("tiny", variant))  # depth 4: sizes must be multiples of 8
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 3, 20, 16), torch.tensor([1]), image=torch.zeros(1, 1, 20, 16))


def test_bad_inputs_raise() -> None:
    net = build_model(preset_config("tiny"))
    image = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ValueError, match="must be 4D"):
        net(torch.zeros(3, 16, 16), torch.tensor([1]), image=image)
    with pytest.raises(ValueError, match="3 channels"):
        net(torch.zeros(2, 2, 16, 16), torch.tensor([1]), image=image)
    with pytest.raises(ValueError, match="does not divide"):
        net(torch.zeros(3, 3, 16, 16), torch.tensor([1]), image=image)
    with pytest.raises(ValueError, match="timesteps must be"):
        net(torch.zeros(2, 3, 16, 16), torch.tensor([1, 2, 3]), image=image)
    with pytest.raises(ValueError, match="differs"):
        net(torch.zeros(2, 3, 16, 16), torch.tensor([1]), image=torch.zeros(2, 1, 32, 32))
    no_ie = build_model(preset_config("tiny", "spinesegdiff_no_ie"))
    features = net.encode_image(image)
    with pytest.raises(ValueError, match="image_features must be None"):
        no_ie(torch.zeros(2, 3, 16, 16), torch.tensor([1]), image=image, image_features=features)


def test_config_round_trip_through_json() -> None:
    for variant in VARIANTS:
        for preset in ("paper", "compact", "tiny"):
            config = preset_config(preset, variant)
            restored = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
            assert restored == config
            assert isinstance(restored.widths, tuple)
    custom = ModelConfig(
        variant="diffunet2d", widths=(4, 8), time_embed_dim=16, dropout=0.2, negative_slope=0.2
    )
    assert ModelConfig.from_dict(custom.to_dict()) == custom
    assert custom.to_dict()["widths"] == [4, 8]


def test_config_is_frozen_and_keyword_only() -> None:
    config = preset_config("tiny")
    with pytest.raises(AttributeError, match="cannot assign to field 'dropout'"):
        config.dropout = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional argument"):
        ModelConfig("spinesegdiff")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "segformer"}, "variant must be one of"),
        ({"widths": (8,)}, "at least two"),
        ({"widths": (8, 0)}, "at least two positive"),
        ({"time_embed_dim": 12}, "multiple of 8"),
        ({"norm": "batch"}, "norm must be one of"),
        ({"dropout": 1.0}, "dropout"),
        ({"negative_slope": -0.1}, "negative_slope"),
        ({"mask_channels": 0}, "mask_channels"),
        ({"attention_levels": (5,)}, "attention_levels"),
        ({"variant": "iisdm", "widths": (8, 10), "num_heads": 4}, "divisible by num_heads"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys() -> None:
    data = preset_config("tiny").to_dict() | {"depth": 5}
    with pytest.raises(ValueError, match="unknown ModelConfig keys: depth"):
        ModelConfig.from_dict(data)


def test_presets() -> None:
    paper = preset_config("paper")
    assert paper.widths == (64, 64, 128, 256, 512)
    assert paper.norm == "instance" and paper.negative_slope == 0.1
    assert preset_config("tiny").widths == (8, 8, 16, 16)
    assert preset_config("paper", "iisdm").widths == (128, 128, 256, 256, 512, 512)
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_config("huge")
    compact = count_parameters(build_model(preset_config("compact")))
    assert compact * 5 < count_parameters(build_model(paper))


def test_paper_network_size_is_close_to_the_reference() -> None:
    count = count_parameters(build_model(preset_config("paper")))
    assert 13.0e6 < count < 15.0e6  # the reference network has about 13.8 M parameters


def test_gradients_reach_both_encoders() -> None:
    torch.manual_seed(0)
    net = build_model(preset_config("tiny"))
    image, x_t, t = _inputs(2)
    net(x_t, t, image=image).sum().backward()
    first_ie = net.image_encoder.levels[0].conv1.conv.weight.grad
    first_denoiser = net.down[0].conv1.conv.weight.grad
    assert first_ie is not None and first_ie.abs().sum() > 0
    assert first_denoiser is not None and first_denoiser.abs().sum() > 0


def test_segmentation_unet_refuses_bad_sizes_and_other_variants() -> None:
    from spinesegdiff.models import SegmentationUNet

    net = build_model(preset_config("tiny", "unet"))
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 1, 20, 16))
    with pytest.raises(ValueError, match="builds variant 'unet'"):
        SegmentationUNet(preset_config("tiny", "spinesegdiff"))
