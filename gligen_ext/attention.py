"""Attention backends for the base UNet and the gated layers: PyTorch SDPA by default, xformers on CUDA."""

from __future__ import annotations

import importlib.util
import logging

from diffusers.models.attention_processor import Attention
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
