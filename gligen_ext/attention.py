"""Attention backends for the base UNet and the gated layers: PyTorch SDPA by default, xformers on CUDA; and the
split-query attention the gated layers run on them."""

from __future__ import annotations

import importlib.util
import logging

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

logger = logging.getLogger(__name__)

# processor class name -> backend; anything else is reported by its class name
_BACKENDS = {
    "AttnProcessor2_0": "sdpa",
    "AttnProcessor": "eager",
    "XFormersAttnProcessor": "xformers",
    "SlicedAttnProcessor": "sliced",
}


def attention_backends(model: nn.Module) -> dict[str, str]:
    """Module path -> backend ("sdpa", "xformers", "eager", "sliced" or the processor class) for every attention
    layer, the gated layers' ``fuser...attn`` included."""
    return {
        name: _BACKENDS.get(type(module.processor).__name__, type(module.processor).__name__)
        for name, module in model.named_modules()
        if isinstance(module, Attention)
    }


def xformers_available() -> bool:
    """True when the xformers package is importable."""
    return importlib.util.find_spec("xformers") is not None


def enable_best_attention(model: nn.Module) -> str:
    """Use xformers memory-efficient attention when it is installed and ``model`` is on CUDA, else SDPA.

    Applies to every attention layer, gated layers included (they are diffusers ``Attention`` modules). Call it
    after adding adapters, since new layers start on SDPA. Returns the backend chosen.
    """
    on_cuda = next(model.parameters()).is_cuda
    if on_cuda and xformers_available():
        try:
            for module in model.modules():
                if isinstance(module, Attention):
                    module.set_use_memory_efficient_attention_xformers(True)
            return "xformers"
        except Exception as error:  # a wheel built for another CUDA or GPU fails only when probed
            logger.warning("xformers is installed but unusable here (%s); falling back to SDPA", error)
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_use_memory_efficient_attention_xformers(False)
    return "sdpa"


def attend_with_extra_keys(
    attn: Attention, hidden_states: torch.Tensor, extra_key: torch.Tensor, extra_value: torch.Tensor
) -> torch.Tensor | None:
    """Self-attention of ``hidden_states`` over ``[hidden_states ; extra]`` keys, with only its own rows as queries.

    hidden_states: (B, N, C), already normalised; extra_key / extra_value: (B, M, inner_dim), already projected.
    Returns (B, N, C), equal to ``attn(cat([hidden_states, extra_in]))[:, :N]`` where ``extra_key =
    attn.to_k(extra_in)`` (softmax rows are independent, so the M extra query rows only ever were discarded work).
    Runs on ``attn``'s own backend (SDPA, xformers or eager); returns None for any other processor, so that the
    caller takes the concatenated path that processor expects.
    """
    backend = _BACKENDS.get(type(attn.processor).__name__)
    if backend not in ("sdpa", "xformers", "eager") or attn.norm_q is not None or attn.residual_connection:
        return None
    query = attn.to_q(hidden_states)
    key = torch.cat([attn.to_k(hidden_states), extra_key.to(query.dtype)], dim=1)
    value = torch.cat([attn.to_v(hidden_states), extra_value.to(query.dtype)], dim=1)
    if backend == "sdpa":
        query, key, value = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in (query, key, value))
        out = rearrange(F.scaled_dot_product_attention(query, key, value), "b h n d -> b n (h d)")
    elif backend == "xformers":
        import xformers.ops

        query, key, value = (attn.head_to_batch_dim(t).contiguous() for t in (query, key, value))
        out = xformers.ops.memory_efficient_attention(query, key, value, op=attn.processor.attention_op,
                                                      scale=attn.scale)
        out = attn.batch_to_head_dim(out.to(query.dtype))
    else:
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(query, key, None), value))
    return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor
