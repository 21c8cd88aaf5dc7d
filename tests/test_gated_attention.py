"""The gated layer's split-query attention equals GLIGEN's Eq. 8 as written, on every backend it handles."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor

from gligen_ext import GatedSelfAttention


def opened_layer(processor) -> GatedSelfAttention:
    torch.manual_seed(0)
    layer = GatedSelfAttention(query_dim=32, context_dim=24, heads=4, dim_head=8).eval()
    with torch.no_grad():
        layer.alpha_attn.fill_(0.8)
        layer.alpha_dense.fill_(-0.5)
    layer.attn.set_processor(processor)
    return layer


def eq8_as_written(layer: GatedSelfAttention, visual: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """GLIGEN Eq. 8: self-attention over the concatenation, visual rows kept."""
    grounding = layer.linear(tokens)
    attended = layer.attn(layer.norm1(torch.cat([visual, grounding], dim=1)))[:, : visual.shape[1]]
    visual = visual + layer.scale * layer.alpha_attn.tanh() * attended
    return visual + layer.scale * layer.alpha_dense.tanh() * layer.ff(layer.norm2(visual))


@pytest.mark.parametrize("processor", [AttnProcessor2_0(), AttnProcessor(), SlicedAttnProcessor(2)],
                         ids=lambda processor: type(processor).__name__)  # addresses differ between xdist workers
def test_split_query_attention_equals_concatenated(processor):
    layer = opened_layer(processor)
    visual, tokens = torch.randn(2, 20, 32), torch.randn(2, 5, 24)
    with torch.no_grad():
        torch.testing.assert_close(layer(visual, tokens), eq8_as_written(layer, visual, tokens), rtol=0, atol=1e-5)


def test_grounding_keys_are_computed_once_per_tokens_and_follow_weight_edits():
    layer = opened_layer(AttnProcessor2_0())
    visual, tokens = torch.randn(1, 16, 32), torch.randn(1, 3, 24)
    calls = []
    layer.linear.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        first = layer(visual, tokens)
        second = layer(visual + 1, tokens)
        assert len(calls) == 1, "same tokens: keys and values come from the cache"
        layer.linear.weight.mul_(2)  # an in-place edit, as a LoRA merge or load does
        edited = layer(visual, tokens)
        assert len(calls) == 2
        expected = eq8_as_written(layer, visual, tokens)
    torch.testing.assert_close(edited, expected, rtol=0, atol=1e-5)
    assert not torch.equal(first, second) and not torch.equal(first, edited)
    layer(visual, tokens).sum().backward()  # with gradients on, nothing is cached
    assert len(calls) == 4 and layer.linear.weight.grad is not None


def test_inference_mode_tokens():
    layer = opened_layer(AttnProcessor2_0())
    with torch.inference_mode():
        visual, tokens = torch.randn(1, 16, 32), torch.randn(1, 3, 24)
        torch.testing.assert_close(layer(visual, tokens), eq8_as_written(layer, visual, tokens), rtol=0, atol=1e-5)
