"""Spatial tokenizers that hold official GLIGEN weights: ConvNeXt-T names, null order, downsamplers, first conv."""

import pytest
import torch
import torch.nn.functional as F
from conftest import open_gates, randomize
from torch import nn

from gligen_ext import add_grounding_adapter, prepare_grounding, set_grounding_scale
from gligen_ext.tokenizers import GroundingDims, build_tokenizer
from gligen_ext.tokenizers.convnext import ConvNeXt

DIMS = GroundingDims(token_dim=48, positive_len=32, conv_in_channels=32)
OFFICIAL = {"backbone": "convnext_tiny", "grid_size": 8, "resize_input": 256, "first_conv_override": True}


def test_convnext_tiny_has_the_reference_names_shapes_and_stride():
    net = ConvNeXt(3)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["downsample_layers.0.0.weight"] == (96, 3, 4, 4)
    assert shapes["downsample_layers.0.1.weight"] == (96,)
    assert shapes["downsample_layers.3.1.weight"] == (768, 384, 2, 2)
    assert shapes["stages.2.8.dwconv.weight"] == (384, 1, 7, 7)
    assert shapes["stages.3.2.pwconv1.weight"] == (3072, 768)
    assert shapes["stages.3.2.gamma"] == (768,)
    block = {k.removeprefix("stages.0.0.") for k in shapes if k.startswith("stages.0.0.")}
    layers = ("dwconv", "norm", "pwconv1", "pwconv2")
    assert block == {f"{m}.{p}" for m in layers for p in ("weight", "bias")} | {"gamma"}
    # ConvNeXt-T: 27.8 M parameters without its head and final norm (GLIGEN reference, Sec. 2.6)
    assert 27.7e6 < sum(v.numel() for v in net.state_dict().values()) < 27.9e6
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 96)).shape == (1, 768, 2, 3)


def test_convnext_backbone_rejects_a_size_it_cannot_make_a_grid_from():
    with pytest.raises(ValueError, match="32 \\* grid_size"):
        build_tokenizer("depth", dims=DIMS, backbone="convnext_tiny", grid_size=8, resize_input=224)


def test_null_feature_replaces_the_map_before_positions_are_added():
    tokenizer = build_tokenizer("depth", dims=DIMS)
    randomize(tokenizer)
    nulls = tokenizer.null_inputs(1)
    with torch.no_grad():
        tokens = tokenizer(**nulls)
        expected = tokenizer.linears(tokenizer.null_feature + tokenizer.pos_embedding)
    assert torch.allclose(tokens, expected, atol=1e-6)
    assert not torch.allclose(tokens[0, 0], tokens[0, 1])  # null tokens still differ by position


@pytest.mark.parametrize(
    ("modality", "extra_channels", "downsampler_in"),
    [("depth", 8, 1), ("canny", 8, 1), ("normal", 8, 3), ("semantic", 8, 152), ("hed", 1, None)],
)
def test_downsampler_shapes_follow_gligen(modality, extra_channels, downsampler_in):
    tokenizer = build_tokenizer(modality, dims=DIMS, **OFFICIAL)
    assert tokenizer.conv_in_residual_proj.weight.shape == (32, extra_channels, 3, 3)
    assert tokenizer.conv_in_latent_weight.shape == (32, 4, 3, 3)
    if downsampler_in is None:
        assert not hasattr(tokenizer, "downsample_net")  # HED: no parameters, the resized map is the channel
    else:
        assert tokenizer.downsample_net[0].weight.shape[1] == downsampler_in
        assert tokenizer.downsample_net[2].weight.shape[0] == 8
    assert hasattr(tokenizer, "in_conv") == (modality == "semantic")


def test_residual_equals_gligens_widened_first_conv():
    """GLIGEN runs conv_in over [latent ; downsampled map] with a (C, 4 + k) weight and SD's bias."""
    base = nn.Conv2d(4, 32, 3, padding=1)
    tokenizer = build_tokenizer("depth", dims=DIMS, **OFFICIAL)
    randomize(tokenizer)
    latents = torch.randn(2, 4, 8, 8)
    inputs = tokenizer.null_inputs(2)
    inputs["maps"] = torch.rand(2, 1, 256, 256) * 2 - 1
    inputs["conv_masks"] = torch.ones(2)
    with torch.no_grad():
        grounded = base(latents) + tokenizer.conv_in_residual(inputs, latents=latents, conv_in=base)
        extra = tokenizer.downsample_net(F.interpolate(inputs["maps"], size=(32, 32), mode="bicubic"))
        weight = torch.cat([tokenizer.conv_in_latent_weight, tokenizer.conv_in_residual_proj.weight], dim=1)
        widened = F.conv2d(torch.cat([latents, extra], dim=1), weight, base.bias, padding=1)
    assert torch.allclose(grounded, widened, atol=1e-5)


def test_first_conv_override_is_identity_at_init_and_exactly_the_base_at_beta_zero(unet, unet_inputs):
    sample, timestep, context = unet_inputs
    with torch.no_grad():
        base = unet(sample, timestep, context).sample
    add_grounding_adapter(unet, "depth", tokenizer_options={"depth": {"first_conv_override": True}})
    tokenizer = unet.position_net.adapters["default"].tokenizers["depth"]
    assert torch.equal(tokenizer.conv_in_latent_weight, unet.conv_in.weight)
    layout = {"depth": torch.rand(1, 40, 40)}
    kwargs = {"cross_attention_kwargs": {"gligen": prepare_grounding(unet, layout, batch_size=2)}}
    with torch.no_grad():
        assert torch.allclose(unet(sample, timestep, context, **kwargs).sample, base)
        open_gates(unet)
        randomize(unet.position_net)
        grounded = unet(sample, timestep, context, **kwargs).sample
        set_grounding_scale(unet, beta=0.0)
        off = unet(sample, timestep, context, **kwargs).sample
    assert not torch.allclose(grounded, base, atol=1e-4)
    assert torch.equal(off, base)


def test_official_style_adapter_round_trips_through_a_file(tmp_path, unet_inputs):
    from gligen_ext import load_grounding_adapter, save_grounding_adapter
    from gligen_ext.testing import tiny_unet

    sample, timestep, context = unet_inputs
    source, target = tiny_unet(), tiny_unet()
    add_grounding_adapter(source, "hed", tokenizer_options={"hed": OFFICIAL | {"backbone": "small"}})
    open_gates(source)
    randomize(source.position_net)
    path = save_grounding_adapter(source, tmp_path / "hed.safetensors")
    load_grounding_adapter(target, path)
    outputs, layout = [], {"hed": torch.rand(1, 40, 40)}
    for unet in (source, target):
        grounding = prepare_grounding(unet, layout, batch_size=2)
        with torch.no_grad():
            outputs.append(unet(sample, timestep, context, cross_attention_kwargs={"gligen": grounding}).sample)
    assert torch.equal(*outputs)
    assert unet.position_net.adapters["default"].tokenizers["hed"].options["first_conv_override"]
