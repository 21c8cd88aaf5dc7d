"""Pins the diffusers hooks gligen-ext relies on and checks parity with diffusers' own GLIGEN modules.

If a diffusers upgrade moves ``position_net`` or the ``fuser`` call, these tests fail loudly.
"""

import torch
from conftest import randomize
from diffusers import UNet2DConditionModel
from diffusers.models.attention import GatedSelfAttentionDense
from diffusers.models.embeddings import GLIGENTextBoundingboxProjection, get_fourier_embeds_from_boundingbox

from gligen_ext import GatedSelfAttention, GroundingDims, adapter_parameters, add_grounding_adapter
from gligen_ext.gated_attention import GroundingFuser
from gligen_ext.inject import GroundingPositionNet
from gligen_ext.testing import tiny_unet, tiny_unet_config
from gligen_ext.tokenizers import build_tokenizer, fourier_embed


def random_boxes(batch=2, n=30, width=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, n, 2, 2, generator=generator).sort(dim=2).values
    boxes = torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], dim=-1)
    masks = (torch.rand(batch, n, generator=generator) > 0.5).float()
    return boxes, masks, torch.randn(batch, n, width, generator=generator)


def test_hooks_call_position_net_once_and_fuser_between_self_and_cross_attention(unet, unet_inputs):
    add_grounding_adapter(unet, "boxes")
    calls = []
    block = next(m for m in unet.modules() if isinstance(m, GroundingFuser))
    owner = next(m for m in unet.modules() if getattr(m, "fuser", None) is block)
    handles = [
        owner.attn1.register_forward_hook(lambda *_: calls.append("attn1")),
        block.register_forward_hook(lambda *_: calls.append("fuser")),
        owner.attn2.register_forward_hook(lambda *_: calls.append("attn2")),
        unet.position_net.register_forward_hook(lambda *_: calls.append("position_net")),
    ]
    boxes, masks, embeddings = random_boxes()
    grounding = {"default": {"boxes": {"boxes": boxes, "masks": masks, "positive_embeddings": embeddings}}}
    sample, timestep, context = unet_inputs
    with torch.no_grad():
        unet(sample, timestep, context, cross_attention_kwargs={"gligen": grounding})
    for handle in handles:
        handle.remove()
    assert calls.count("position_net") == 1, "diffusers no longer calls unet.position_net once per forward"
    assert calls[calls.index("attn1") :][:3] == ["attn1", "fuser", "attn2"], f"fuser moved: {calls}"
    assert isinstance(unet.position_net, GroundingPositionNet)


def test_fourier_embedding_matches_diffusers():
    boxes, _, _ = random_boxes()
    assert torch.allclose(fourier_embed(boxes), get_fourier_embeds_from_boundingbox(8, boxes), atol=1e-6)


def test_gated_layer_matches_diffusers_on_shared_weights():
    torch.manual_seed(0)
    ours = GatedSelfAttention(query_dim=64, context_dim=32, heads=8, dim_head=8)
    theirs = GatedSelfAttentionDense(64, 32, 8, 8)
    randomize(ours)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x, objs = torch.randn(2, 50, 64), torch.randn(2, 30, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x, objs), theirs(x, objs), atol=1e-6)


def test_box_tokenizers_match_diffusers_projection():
    dims = GroundingDims(token_dim=48, positive_len=32, conv_in_channels=32)
    boxes, masks, embeddings = random_boxes()
    ours = build_tokenizer("boxes", dims=dims)
    randomize(ours)
    theirs = GLIGENTextBoundingboxProjection(positive_len=32, out_dim=48, feature_type="text-only")
    theirs.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert torch.allclose(ours(boxes, masks, embeddings), theirs(boxes, masks, positive_embeddings=embeddings))

    ours = build_tokenizer("image_boxes", dims=dims)
    randomize(ours)
    theirs = GLIGENTextBoundingboxProjection(positive_len=32, out_dim=48, feature_type="text-image")
    theirs.load_state_dict(ours.state_dict())
    _, phrase_masks, images = random_boxes(seed=1)
    inputs = dict(
        boxes=boxes,
        masks=masks,
        phrases_masks=phrase_masks,
        image_masks=1 - phrase_masks,
        phrases_embeddings=embeddings,
        image_embeddings=images,
    )
    with torch.no_grad():
        assert torch.allclose(ours(**inputs), theirs(**inputs), atol=1e-6)


def test_whole_unet_matches_diffusers_gated_unet(unet_inputs):
    """Same weights, same inputs: a base UNet + gligen-ext box adapter == diffusers' gated UNet (fp32)."""
    gated = UNet2DConditionModel(**tiny_unet_config(), attention_type="gated").eval()
    randomize(gated, seed=3)  # gates and nulls included: at zero they would prove nothing
    base = tiny_unet()
    missing, unexpected = base.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and all(".fuser." in k or k.startswith("position_net.") for k in unexpected)
    add_grounding_adapter(base, "boxes")
    params = adapter_parameters(base, "default")
    assert set(params) == set(unexpected), "adapter keys must equal diffusers' GLIGEN UNet keys"
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(gated.state_dict()[key])
    boxes, masks, embeddings = random_boxes()
    sample, timestep, context = unet_inputs
    with torch.no_grad():
        theirs = gated(
            sample,
            timestep,
            context,
            cross_attention_kwargs={"gligen": {"boxes": boxes, "masks": masks, "positive_embeddings": embeddings}},
        ).sample
        ours = base(
            sample,
            timestep,
            context,
            cross_attention_kwargs={
                "gligen": {"default": {"boxes": {"boxes": boxes, "masks": masks, "positive_embeddings": embeddings}}}
            },
        ).sample
    assert (ours - theirs).abs().max() < 1e-5
