"""Injection invariants: identity at init, exact unload, trainability, scaling, stacking, multi-modality."""

import pytest
import torch
from conftest import open_gates, randomize
from diffusers.models.attention import BasicTransformerBlock

from gligen_ext import (
    GatedSelfAttention,
    GroundingAdapterError,
    add_grounding_adapter,
    grounding_adapters,
    prepare_grounding,
    remove_grounding_adapter,
    set_grounding_scale,
    unload_grounding_adapters,
)
from gligen_ext.testing import tiny_unet

LAYOUT = {
    "boxes": [{"phrase": "a red apple", "box": [0.1, 0.1, 0.5, 0.6]}],
    "keypoints": [{"points": [[0.3 + 0.02 * i, 0.2 + 0.03 * i, 2] for i in range(17)]}],
    "depth": torch.linspace(0, 1, 48 * 40).reshape(48, 40),
}


def forward(unet, inputs, grounding=None):
    sample, timestep, context = inputs
    kwargs = {"cross_attention_kwargs": {"gligen": grounding}} if grounding is not None else {}
    with torch.no_grad():
        return unet(sample, timestep, context, **kwargs).sample


def state(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("ff_mult", [4, 1])
def test_identity_at_init(unet, unet_inputs, encoders, ff_mult):
    base = forward(unet, unet_inputs)
    add_grounding_adapter(unet, ["boxes", "keypoints", "depth"], ff_mult=ff_mult)
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=2, strict=False)
    assert torch.equal(forward(unet, unet_inputs, grounding), base)


def test_open_gates_change_output_and_unload_restores_exactly(unet, unet_inputs, encoders):
    base, before = forward(unet, unet_inputs), state(unet)
    flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    processors = len(unet.attn_processors)
    add_grounding_adapter(unet, ["boxes", "depth"])
    open_gates(unet)
    randomize(unet.position_net)
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=2, strict=False)
    assert not torch.allclose(forward(unet, unet_inputs, grounding), base, atol=1e-3)
    assert len(unet.attn_processors) > processors
    unload_grounding_adapters(unet)
    assert torch.equal(forward(unet, unet_inputs), base)
    after = state(unet)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert {name: p.requires_grad for name, p in unet.named_parameters()} == flags
    assert len(unet.attn_processors) == processors
    assert not hasattr(unet, "position_net")
    assert not unet._forward_pre_hooks and not unet._forward_hooks and not unet.conv_in._forward_hooks


def test_only_adapter_parameters_train_and_backward_reaches_them(unet, unet_inputs, encoders):
    adapter = add_grounding_adapter(unet, ["boxes", "depth"])
    trainable = {name for name, p in unet.named_parameters() if p.requires_grad}
    adapter_params = {id(p) for p in adapter.parameters()} | {
        id(p) for m in unet.modules() if isinstance(m, GatedSelfAttention) for p in m.parameters()
    }
    assert {id(p) for p in unet.parameters() if p.requires_grad} == adapter_params
    assert all(".fuser." in n or n.startswith("position_net.") for n in trainable)

    sample, timestep, context = unet_inputs
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=2, strict=False)
    unet(sample, timestep, context, cross_attention_kwargs={"gligen": grounding}).sample.square().mean().backward()
    gates = [p for n, p in unet.named_parameters() if n.endswith("alpha_attn")]
    # GLIGEN Sec. 3.2: at init tanh(0) = 0, so only the gates get gradient
    assert all(p.grad is not None and p.grad.abs() > 0 for p in gates)
    linear = next(m for m in unet.modules() if isinstance(m, GatedSelfAttention)).linear.weight
    assert linear.grad is None or linear.grad.abs().max() == 0
    assert all(p.grad is None for n, p in unet.named_parameters() if not p.requires_grad)

    unet.zero_grad()
    open_gates(unet, 0.5)
    randomize(unet.position_net)
    unet(sample, timestep, context, cross_attention_kwargs={"gligen": grounding}).sample.square().mean().backward()
    assert linear.grad.abs().max() > 0
    residual = adapter.tokenizers["depth"].conv_in_residual_proj.weight
    assert residual.grad.abs().max() > 0


@pytest.mark.parametrize("setting", [{"beta": 0.0}, {"weight": 0.0}, {"enabled": False}])
def test_zero_scale_equals_base(unet, unet_inputs, encoders, setting):
    base = forward(unet, unet_inputs)
    add_grounding_adapter(unet, ["boxes", "depth"])
    open_gates(unet)
    randomize(unet.position_net)
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=2, strict=False)
    set_grounding_scale(unet, **setting)
    assert torch.equal(forward(unet, unet_inputs, grounding), base)


def test_beta_is_a_float_scale(unet, unet_inputs, encoders):
    add_grounding_adapter(unet, "boxes")
    open_gates(unet)
    randomize(unet.position_net)
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=2, strict=False)
    set_grounding_scale(unet, beta=0.0)
    base = forward(unet, unet_inputs, grounding)
    outputs = []
    for beta in (0.5, 1.0):
        set_grounding_scale(unet, beta=beta)
        outputs.append((forward(unet, unet_inputs, grounding) - base).abs().max())
    assert 0 < outputs[0] < outputs[1]


def test_stacked_adapters_are_independent(unet, unet_inputs, encoders):
    base = forward(unet, unet_inputs)
    add_grounding_adapter(unet, "boxes", adapter_name="boxes")
    add_grounding_adapter(unet, "depth", adapter_name="depth", weight=0.5)
    assert set(grounding_adapters(unet)) == {"boxes", "depth"}
    open_gates(unet)
    randomize(unet.position_net)
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=2, strict=False)
    both = forward(unet, unet_inputs, grounding)
    set_grounding_scale(unet, "depth", enabled=False)
    boxes_only = forward(unet, unet_inputs, grounding)
    assert not torch.equal(both, boxes_only) and not torch.equal(boxes_only, base)
    set_grounding_scale(unet, "depth", enabled=True)
    remove_grounding_adapter(unet, "depth")
    assert torch.equal(forward(unet, unet_inputs, grounding), boxes_only)
    remove_grounding_adapter(unet, "boxes")
    assert torch.equal(forward(unet, unet_inputs), base) and not hasattr(unet, "position_net")


def test_multi_modality_adapter_concatenates_tokens(unet, encoders):
    adapter = add_grounding_adapter(unet, ["boxes", "keypoints", "depth"])
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=2, strict=False)["default"]
    assert adapter(grounding).shape == (2, 30 + 136 + 64, 32)
    # a modality missing from the call still contributes its null tokens, keeping the trained sequence
    assert adapter({"boxes": grounding["boxes"]}).shape == (2, 230, 32)


def test_adapter_absent_from_call_is_skipped(unet, unet_inputs, encoders):
    base = forward(unet, unet_inputs)
    add_grounding_adapter(unet, "keypoints")
    open_gates(unet)
    grounding = prepare_grounding(unet, {"keypoints": []}, encoders, batch_size=2)
    assert grounding == {} and torch.equal(forward(unet, unet_inputs, grounding), base)


def test_name_clash_and_unknown_names(unet):
    add_grounding_adapter(unet, "boxes")
    with pytest.raises(GroundingAdapterError, match="already loaded"):
        add_grounding_adapter(unet, "depth")
    with pytest.raises(GroundingAdapterError, match="no grounding adapter named 'nope'"):
        set_grounding_scale(unet, "nope", beta=0.0)
    with pytest.raises(KeyError, match="did you mean 'depth'"):
        add_grounding_adapter(unet, "dept", adapter_name="other")


def test_diffusers_gated_unet_is_rejected():
    from diffusers import UNet2DConditionModel

    from gligen_ext.testing import tiny_unet_config

    gated = UNet2DConditionModel(**tiny_unet_config(), attention_type="gated")
    with pytest.raises(GroundingAdapterError, match="gligen-ext convert"):
        add_grounding_adapter(gated, "boxes")


def test_sdxl_shaped_unet_with_wider_phrases(encoders):
    unet = tiny_unet(sdxl=True, cross_attention_dim=64)
    adapter = add_grounding_adapter(unet, ["boxes", "depth"], positive_len=32)
    assert adapter.tokenizers["boxes"].null_positive_feature.shape == (32,)
    open_gates(unet)
    randomize(unet.position_net)
    sample, context = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 64)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=1, strict=False)
    with torch.no_grad():
        base = unet(sample, 10, context, added_cond_kwargs=added).sample
        grounded = unet(sample, 10, context, added_cond_kwargs=added, cross_attention_kwargs={"gligen": grounding})
    assert grounded.sample.shape == base.shape and not torch.allclose(grounded.sample, base)
    # transformer_layers_per_block=(1, 2): every transformer block gets its own gated layer
    blocks = sum(isinstance(m, BasicTransformerBlock) for m in unet.modules())
    assert sum(isinstance(m, GatedSelfAttention) for m in unet.modules()) == blocks == 8


def test_gradient_checkpointing(unet, unet_inputs, encoders):
    add_grounding_adapter(unet, "boxes")
    open_gates(unet, 0.5)
    unet.enable_gradient_checkpointing()
    unet.train()
    sample, timestep, context = unet_inputs
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=2, strict=False)
    unet(sample, timestep, context, cross_attention_kwargs={"gligen": grounding}).sample.mean().backward()
    assert all(p.grad is not None for n, p in unet.named_parameters() if n.endswith("alpha_attn"))


def test_tokens_computed_once_for_repeated_inputs_and_recomputed_after_edits(unet, unet_inputs, encoders):
    adapter = add_grounding_adapter(unet, "boxes")
    open_gates(unet)
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=2, strict=False)
    calls = []
    adapter.register_forward_hook(lambda *_: calls.append(1))
    first = forward(unet, unet_inputs, grounding)
    assert torch.equal(forward(unet, unet_inputs, grounding), first) and len(calls) == 1
    randomize(adapter)
    assert not torch.equal(forward(unet, unet_inputs, grounding), first) and len(calls) == 2
