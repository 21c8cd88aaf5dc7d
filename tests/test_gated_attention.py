"""The gated layer's split-query attention equals GLIGEN's Eq. 8 as written, on every backend it handles."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor

from gligen_ext import GatedSelfAttention
from gligen_ext.gated_attention import visual_grid


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


def test_visual_grid_follows_the_unet_levels():
    assert visual_grid(16 * 24, (16, 24)) == (16, 24)
    assert visual_grid(8 * 12, (16, 24)) == (8, 12)
    assert visual_grid(3 * 4, (9, 13)) == (3, 4)  # 9x13 -> 5x7 -> 3x4: each level rounds up
    assert visual_grid(64, None) == (8, 8)
    with pytest.raises(ValueError, match="latent_size"):
        visual_grid(8 * 12, None)
    with pytest.raises(ValueError, match="no level"):
        visual_grid(50, (16, 24))


def test_visual_positions_change_the_output_by_place_and_start_as_identity():
    torch.manual_seed(0)
    layer = GatedSelfAttention(query_dim=32, context_dim=24, heads=4, dim_head=8, position_freqs=4).eval()
    visual, tokens = torch.randn(1, 6 * 4, 32), torch.randn(1, 3, 24)
    with torch.no_grad():
        assert torch.equal(layer(visual, tokens, latent_size=(12, 8)), visual), "closed gates: identity"
        layer.alpha_attn.fill_(0.8)
        same_rows = visual[:, :1].expand(1, 24, 32)  # every token alike: only its place tells them apart
        out = layer(same_rows, tokens, latent_size=(12, 8))
        assert not torch.allclose(out[:, 0], out[:, -1])
        plain = GatedSelfAttention(query_dim=32, context_dim=24, heads=4, dim_head=8).eval()
        plain.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("visual_position")})
        flat = plain(same_rows, tokens)
        torch.testing.assert_close(flat[:, 0], flat[:, -1])
    # the grid is row-major with x across, as diffusers flattens: token 1 is right of token 0, token 4 below it
    features = layer._grid_features(visual, (12, 8))  # level 6x4; per frequency [sin x, sin y, cos x, cos y]
    x_features, y_features = features[:, 0::2], features[:, 1::2]
    assert features.shape == (24, 16)
    assert torch.equal(y_features[1], y_features[0]) and not torch.equal(x_features[1], x_features[0])
    assert torch.equal(x_features[4], x_features[0]) and not torch.equal(y_features[4], y_features[0])
