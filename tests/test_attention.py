"""Attention backends: SDPA everywhere by default (gated layers included); xformers on CUDA when installed."""

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from gligen_ext import add_grounding_adapter, attention_backends, enable_best_attention, xformers_available
from gligen_ext.testing import tiny_unet


def test_every_layer_reported_and_sdpa_by_default(unet):
    add_grounding_adapter(unet, "boxes")
    backends = attention_backends(unet)
    gated = [name for name in backends if ".fuser." in name]
    assert len(gated) == 4 and len(backends) == 12
    assert set(backends.values()) == {"sdpa"}


def test_cpu_falls_back_to_sdpa(unet):
    add_grounding_adapter(unet, "boxes")
    unet.set_attn_processor(AttnProcessor())
    assert set(attention_backends(unet).values()) == {"eager"}
    assert enable_best_attention(unet) == "sdpa"
    assert set(attention_backends(unet).values()) == {"sdpa"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(not xformers_available(), reason="needs xformers")
def test_xformers_on_cuda_reaches_gated_layers():
    from conftest import open_gates

    unet = tiny_unet().cuda().half()
    add_grounding_adapter(unet, "boxes")
    open_gates(unet)
    sample = torch.randn(2, 4, 16, 16, device="cuda", dtype=torch.half)
    context = torch.randn(2, 77, 32, device="cuda", dtype=torch.half)
    grounding = {
        "default": {
            "boxes": {
                k: v.cuda().half()
                for k, v in unet.position_net.adapters["default"].tokenizers["boxes"].null_inputs(2).items()
            }
        }
    }
    with torch.no_grad():
        reference = unet(sample, 10, context, cross_attention_kwargs={"gligen": grounding}).sample
        assert enable_best_attention(unet) == "xformers"
        assert set(attention_backends(unet).values()) == {"xformers"}
        fast = unet(sample, 10, context, cross_attention_kwargs={"gligen": grounding}).sample
    assert (fast - reference).abs().max() < 2e-2
