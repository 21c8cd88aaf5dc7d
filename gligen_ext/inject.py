"""Add, scale, stack and remove grounding adapters on a diffusers ``UNet2DConditionModel``.

This is the only module that knows diffusers' UNet internals. It relies on diffusers' own GLIGEN hooks:

* ``UNet2DConditionModel.forward`` replaces ``cross_attention_kwargs["gligen"]`` with
  ``{"objs": self.position_net(**gligen)}`` right after ``conv_in``;
* every ``BasicTransformerBlock`` then calls ``self.fuser(hidden_states, objs)`` between self- and cross-attention.

So a stock UNet becomes grounded by attaching a ``fuser`` to each transformer block and one ``position_net`` to the
UNet; nothing in diffusers is patched. ``tests/test_diffusers_contract.py`` fails loudly if an upgrade moves a hook.
``conv_in`` runs before ``position_net``, so spatial tokenizers add their first-conv residual through forward hooks.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from diffusers.models.attention import BasicTransformerBlock
from torch import nn

from .gated_attention import GatedSelfAttention, GroundingFuser
from .position_net import AdapterTokenizers, GroundingPositionNet
from .tokenizers import GroundingDims, build_tokenizer


class GroundingAdapterError(ValueError):
    """A grounding adapter cannot be added, found or combined as asked."""


def transformer_blocks(unet: nn.Module) -> list[tuple[str, BasicTransformerBlock]]:
    """Every transformer block that gets a gated layer, with its module path."""
    return [(name, module) for name, module in unet.named_modules() if isinstance(module, BasicTransformerBlock)]


def grounding_dims(unet: nn.Module, *, positive_len: int | None = None) -> GroundingDims:
    """Token width from the UNet's cross-attention, phrase width from ``positive_len`` (default: token width)."""
    widths = {block.attn2.cross_attention_dim for _, block in transformer_blocks(unet) if block.attn2 is not None}
    if len(widths) != 1:
        raise GroundingAdapterError(
            f"expected one cross_attention_dim across transformer blocks, found {sorted(widths)}"
        )
    token_dim = widths.pop()
    return GroundingDims(
        token_dim=token_dim, positive_len=positive_len or token_dim, conv_in_channels=unet.conv_in.out_channels
    )


def unet_fingerprint(unet: nn.Module) -> dict[str, Any]:
    """The base-UNet shape an adapter depends on, stored in adapter files and checked on load."""
    blocks = transformer_blocks(unet)
    return {
        "cross_attention_dim": grounding_dims(unet).token_dim,
        "conv_in_channels": unet.conv_in.out_channels,
        "num_transformer_blocks": len(blocks),
        "block_widths": [block.attn1.query_dim for _, block in blocks],
    }


def grounding_adapters(unet: nn.Module) -> dict[str, AdapterTokenizers]:
    """Loaded adapters by name (empty if none)."""
    position_net = getattr(unet, "position_net", None)
    return dict(position_net.adapters) if isinstance(position_net, GroundingPositionNet) else {}


def add_grounding_adapter(
    unet: nn.Module,
    modalities: Sequence[str] | str,
    *,
    adapter_name: str = "default",
    positive_len: int | None = None,
    weight: float = 1.0,
    tokenizer_options: dict[str, dict[str, Any]] | None = None,
    visual_position_freqs: int = 0,
    ff_mult: int = 4,
) -> AdapterTokenizers:
    """Inject a new, identity-initialised grounding adapter and freeze every base parameter.

    Adds one :class:`GatedSelfAttention` to every transformer block and one tokenizer per modality. Several adapters
    can be added under different names; they stack. ``visual_position_freqs > 0`` gives the gated layers Fourier
    features of each visual token's grid position (see :class:`GatedSelfAttention`; 0, GLIGEN's layer, for SD).
    ``ff_mult`` is the width of the gated layers' feed-forward over the block's (GLIGEN's 4; less: a smaller file).
    Returns the adapter's tokenizer module.
    """
    modalities = [modalities] if isinstance(modalities, str) else list(modalities)
    if not modalities or len(set(modalities)) != len(modalities):
        raise GroundingAdapterError(f"modalities must be a non-empty list without repeats, got {modalities}")
    if isinstance(ff_mult, bool) or not isinstance(ff_mult, int) or ff_mult < 1:
        raise GroundingAdapterError(f"ff_mult must be a positive integer (GLIGEN's is 4), got {ff_mult!r}")
    position_net = _ensure_grounding_scaffold(unet)
    if adapter_name in position_net.adapters:
        raise GroundingAdapterError(
            f"an adapter named {adapter_name!r} is already loaded; pass another adapter_name or remove it first"
        )
    dims = grounding_dims(unet, positive_len=positive_len)
    options = tokenizer_options or {}
    parameter = next(unet.parameters())
    tokenizers = {m: build_tokenizer(m, dims=dims, **options.get(m, {})) for m in modalities}
    for tokenizer in tokenizers.values():
        tokenizer.init_from_base(unet.conv_in)
    adapter = AdapterTokenizers(tokenizers).to(parameter.device, parameter.dtype)
    adapter.weight = weight
    position_net.adapters[adapter_name] = adapter
    for _, block in transformer_blocks(unet):
        layer = GatedSelfAttention(
            query_dim=block.attn1.query_dim,
            context_dim=dims.token_dim,
            heads=block.attn1.heads,
            dim_head=block.attn1.inner_dim // block.attn1.heads,
            position_freqs=visual_position_freqs,
            ff_mult=ff_mult,
        )
        block.fuser.layers[adapter_name] = layer.to(parameter.device, parameter.dtype)
    set_grounding_scale(unet, adapter_name)
    return adapter


def adapter_parts(unet: nn.Module, adapter_name: str) -> list[tuple[str, nn.Module]]:
    """(file-key prefix, module) of each part of one adapter: its gated layer in every block, then its tokenizers.

    Prefixes follow diffusers' GLIGEN UNet: ``<block>.fuser`` and ``position_net`` for a single-modality adapter,
    ``position_net.<modality>`` when an adapter holds several modalities.
    """
    adapter = _get_adapter(unet, adapter_name)
    parts: list[tuple[str, nn.Module]] = [
        (f"{path}.fuser", block.fuser.layers[adapter_name]) for path, block in transformer_blocks(unet)
    ]
    single = len(adapter.tokenizers) == 1
    parts += [("position_net" if single else f"position_net.{m}", t) for m, t in adapter.tokenizers.items()]
    return parts


def adapter_parameters(unet: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """Every parameter of one adapter under its file key (see :func:`adapter_parts`).

    A layer wrapped by a LoRA (see :mod:`gligen_ext.lora`) counts as the layer it wraps: its parameters keep their
    plain keys and the low-rank factors are not the adapter's own, so they are left out.
    """
    return {
        f"{prefix}.{key}": param
        for prefix, module in adapter_parts(unet, adapter_name)
        for key, param in plain_parameters(module).items()
    }


def plain_parameters(module: nn.Module, prefix: str = "") -> dict[str, nn.Parameter]:
    """``module``'s parameters under the names they have without LoRA: a peft LoRA wrapper stands for its
    ``base_layer``, whose parameters keep the wrapped layer's names."""
    if hasattr(module, "base_layer") and hasattr(module, "get_base_layer"):
        module = module.get_base_layer()
    params = {f"{prefix}{name}": param for name, param in module.named_parameters(recurse=False)}
    for name, child in module.named_children():
        params |= plain_parameters(child, f"{prefix}{name}.")
    return params


def set_grounding_scale(
    unet: nn.Module,
    adapter_name: str | None = None,
    *,
    weight: float | None = None,
    beta: float | None = None,
    enabled: bool | None = None,
) -> None:
    """Set an adapter's weight, scheduled-sampling ``beta`` and/or enabled flag (all adapters when name is None).

    The gated residuals are multiplied by ``weight * beta``; at 0 the adapter does no work and the UNet output equals
    the base output exactly.
    """
    names = list(grounding_adapters(unet)) if adapter_name is None else [adapter_name]
    for name in names:
        adapter = _get_adapter(unet, name)
        adapter.weight = adapter.weight if weight is None else float(weight)
        adapter.beta = adapter.beta if beta is None else float(beta)
        adapter.enabled = adapter.enabled if enabled is None else bool(enabled)
        for _, block in transformer_blocks(unet):
            block.fuser.layers[name].scale = adapter.scale


def remove_grounding_adapter(unet: nn.Module, adapter_name: str) -> None:
    """Remove one adapter; removing the last one restores the UNet exactly as it was before injection."""
    _get_adapter(unet, adapter_name)
    for _, block in transformer_blocks(unet):
        del block.fuser.layers[adapter_name]
    del unet.position_net.adapters[adapter_name]
    unet.position_net.token_cache.pop(adapter_name, None)
    if not unet.position_net.adapters:
        unload_grounding_adapters(unet)


def unload_grounding_adapters(unet: nn.Module) -> None:
    """Remove every adapter, fuser, hook and ``position_net``, and restore the base ``requires_grad`` flags."""
    position_net = getattr(unet, "position_net", None)
    if not isinstance(position_net, GroundingPositionNet):
        return
    for handle in position_net.hook_handles:
        handle.remove()
    for _, block in transformer_blocks(unet):
        if isinstance(getattr(block, "fuser", None), GroundingFuser):
            del block.fuser
    del unet.position_net
    for name, param in unet.named_parameters():
        param.requires_grad_(position_net.original_requires_grad.get(name, param.requires_grad))


def _get_adapter(unet: nn.Module, adapter_name: str) -> AdapterTokenizers:
    adapters = grounding_adapters(unet)
    if adapter_name not in adapters:
        known = ", ".join(repr(n) for n in adapters) or "none"
        raise GroundingAdapterError(f"no grounding adapter named {adapter_name!r} is loaded (loaded: {known})")
    return adapters[adapter_name]


def _ensure_grounding_scaffold(unet: nn.Module) -> GroundingPositionNet:
    """Attach the empty position net, per-block fusers and hooks on first use; freeze the base."""
    existing = getattr(unet, "position_net", None)
    if isinstance(existing, GroundingPositionNet):
        return existing
    blocks = transformer_blocks(unet)
    if not blocks:
        raise GroundingAdapterError("this UNet has no transformer blocks with cross-attention to ground")
    if existing is not None or any(hasattr(block, "fuser") for _, block in blocks):
        raise GroundingAdapterError(
            "this UNet already carries diffusers GLIGEN layers (attention_type='gated'); build the base UNet with the "
            "default attention_type and load the GLIGEN weights as an adapter (gligen-ext convert)"
        )
    position_net = GroundingPositionNet()
    position_net.original_requires_grad = {name: p.requires_grad for name, p in unet.named_parameters()}
    unet.requires_grad_(False)
    for _, block in blocks:
        block.fuser = GroundingFuser()
    unet.position_net = position_net
    position_net.hook_handles = [
        unet.register_forward_pre_hook(partial(_remember_grounding_inputs, position_net), with_kwargs=True),
        unet.conv_in.register_forward_hook(partial(_add_conv_in_residuals, position_net)),
        unet.register_forward_hook(partial(_forget_grounding_inputs, position_net)),
    ]
    return position_net


def _remember_grounding_inputs(position_net: GroundingPositionNet, unet: nn.Module, args: tuple, kwargs: dict) -> None:
    # conv_in runs before diffusers calls position_net, so the spatial residual reads the inputs from here.
    # Pipelines pass it by keyword; binding the signature (about 0.1 ms a step) is only needed for positional calls.
    if "cross_attention_kwargs" in kwargs:
        cross_attention_kwargs = kwargs["cross_attention_kwargs"] or {}
    else:
        bound = inspect.signature(unet.forward).bind_partial(*args, **kwargs).arguments
        cross_attention_kwargs = bound.get("cross_attention_kwargs") or {}
    position_net.pending_inputs = cross_attention_kwargs.get("gligen")


def _add_conv_in_residuals(
    position_net: GroundingPositionNet, conv_in: nn.Module, args: tuple, output: torch.Tensor
) -> torch.Tensor:
    position_net.latent_size = tuple(args[0].shape[-2:])
    pending = position_net.pending_inputs
    if not pending:
        return output
    for name, inputs in pending.items():
        adapter = position_net.adapters[name] if name in position_net.adapters else None
        if adapter is None or adapter.scale == 0.0:
            continue
        for modality, tokenizer in adapter.tokenizers.items():
            if modality in inputs:
                residual = tokenizer.conv_in_residual(inputs[modality], latents=args[0], conv_in=conv_in)
                if residual is not None:
                    output = output + adapter.scale * residual.to(output.dtype)
    return output


def _forget_grounding_inputs(position_net: GroundingPositionNet, unet: nn.Module, args: tuple, output: Any) -> None:
    position_net.pending_inputs = position_net.latent_size = None
