"""Low-rank fine-tuning of a loaded grounding adapter: LoRA on its gated layers (and optionally its tokenizer MLPs).

peft wraps each targeted ``nn.Linear`` of the adapter in place (its ``lora.Linear`` keeps the original layer as
``base_layer``), so the parent adapter stays frozen and bit-identical while only the low-rank factors train; with
peft's ``B = 0`` initialisation a fresh LoRA changes nothing. A LoRA file holds only those factors, keyed like the
parent's own file (``<block>.fuser.attn.to_q.lora_A.weight``), and metadata naming the parent it was trained on;
loading checks that the same parent is loaded. Merging folds the factors into the parent's weights and leaves a
plain adapter that :func:`~gligen_ext.save_grounding_adapter` writes as usual.

diffusers' own LoRA switches walk every peft layer of the UNet, grounding LoRAs included: ``set_adapters`` would
deactivate them, so each gated layer re-activates its grounding LoRA before it runs. ``fuse_lora`` and
``unload_lora_weights`` reach them as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from .adapters import AdapterMismatchError, adapter_config
from .inject import adapter_parameters, adapter_parts, grounding_adapters
from .tokenizers import GroundingTokenizer

logger = logging.getLogger(__name__)

# attention and feed-forward linears of a gated layer, and its grounding-token projection
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "linear")
# the adapter name inside each wrapped layer; each grounding adapter owns its layers, so one name serves them all
PEFT_ADAPTER_NAME = "grounding_lora"


class GroundingLoraError(ValueError):
    """A grounding LoRA cannot be added, saved, loaded, merged or removed as asked."""


class LoraParentMismatchError(GroundingLoraError, AdapterMismatchError):
    """A LoRA file's parent adapter is not loaded, or the loaded adapter is not the one it was trained on."""


@dataclass(frozen=True)
class LoraSettings:
    """What a grounding LoRA adapts: ``rank``, ``alpha`` (scale ``alpha / rank``), the gated-layer ``targets`` and
    whether the tokenizers' linear layers (``position_net``) are adapted too."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    position_net: bool = False


@dataclass
class AttachedLora:
    """Book-keeping of a LoRA on one adapter (kept as ``adapter.lora``)."""

    settings: LoraSettings
    parent: dict[str, Any]
    requires_grad: dict[str, bool]  # the parent's flags before it was frozen, restored on merge and unload
    hooks: list[Any] = field(default_factory=list)


def add_adapter_lora(
    unet: nn.Module,
    adapter_name: str = "default",
    *,
    rank: int,
    alpha: float | None = None,
    target: tuple[str, ...] = DEFAULT_LORA_TARGETS,
    position_net: bool = False,
) -> list[nn.Parameter]:
    """Attach a fresh LoRA (identity at init) to the loaded adapter ``adapter_name`` and freeze that adapter.

    ``target`` names linear layers of every gated layer by path suffix (``"to_q"``, ``"ff.net.2"``, ...); with
    ``position_net`` the linear layers of the adapter's tokenizers are adapted as well. ``alpha`` defaults to
    ``rank`` (scale 1). Returns the LoRA parameters, the only trainable ones of this adapter.
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise GroundingLoraError(f"rank must be a positive integer, got {rank!r}")
    if alpha is not None and not (isinstance(alpha, (int, float)) and alpha > 0):
        raise GroundingLoraError(f"alpha must be a positive number (or None for alpha = rank), got {alpha!r}")
    if isinstance(target, str) or not target or not all(isinstance(t, str) and t for t in target):
        raise GroundingLoraError(f"target must be a non-empty tuple of layer names, got {target!r}")
    settings = LoraSettings(rank, float(alpha if alpha is not None else rank), tuple(target), bool(position_net))
    attach_lora(unet, adapter_name, settings, parent_identity(unet, adapter_name))
    return adapter_lora_parameters(unet, adapter_name)


def adapter_lora_parameters(unet: nn.Module, adapter_name: str = "default") -> list[nn.Parameter]:
    """The LoRA factors attached to ``adapter_name`` (empty when it has none)."""
    return [
        param
        for _, part in adapter_parts(unet, adapter_name)
        for _, wrapper in _wrappers(part)
        for name, param in wrapper.named_parameters()
        if f".{PEFT_ADAPTER_NAME}." in f".{name}."
    ]


def merge_adapter_lora(unet: nn.Module, adapter_name: str = "default") -> None:
    """Fold the LoRA into the adapter's weights and remove it: the adapter is a plain adapter again (same modules
    and parameter names), now fine-tuned, and :func:`~gligen_ext.save_grounding_adapter` writes a normal file."""
    detach_lora(unet, adapter_name, merge=True)


def unload_adapter_lora(unet: nn.Module, adapter_name: str = "default") -> None:
    """Remove the LoRA without merging: the adapter is exactly as before :func:`add_adapter_lora`."""
    detach_lora(unet, adapter_name, merge=False)


def parent_identity(unet: nn.Module, adapter_name: str) -> dict[str, Any]:
    """What a LoRA records of its parent: hashes of its structure and of its weights (as float32 values, so the
    dtype they are held in does not matter), its modalities and the file it was loaded from."""
    config = adapter_config(unet, adapter_name)
    # what the weights' shapes and meaning depend on; not default_beta, an inference setting
    options = {modality: spec["options"] for modality, spec in config["modalities"].items()}
    structure = {"modalities": options, "dims": config["dims"], "base": config["base"]}
    weights = hashlib.sha256()
    for key, param in sorted(adapter_parameters(unet, adapter_name).items()):
        weights.update(f"{key}{tuple(param.shape)}".encode())
        weights.update(param.detach().to("cpu", torch.float32).contiguous().numpy())
    return {
        "structure_sha256": hashlib.sha256(json.dumps(structure, sort_keys=True).encode()).hexdigest(),
        "weights_sha256": weights.hexdigest(),
        "modalities": sorted(config["modalities"]),
        "file": grounding_adapters(unet)[adapter_name].source,
    }


def attach_lora(unet: nn.Module, adapter_name: str, settings: LoraSettings, parent: dict[str, Any]) -> None:
    """Wrap the adapter's targeted layers with fresh LoRA factors, freeze the adapter, record ``parent``."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:
        raise ImportError("grounding LoRAs need peft: pip install peft (or gligen-ext[train])") from error
    adapter = grounding_adapters(unet).get(adapter_name)
    if adapter is None:
        raise LoraParentMismatchError(f"no grounding adapter named {adapter_name!r} is loaded; load it first")
    parts = adapter_parts(unet, adapter_name)
    if any(_wrappers(part, ours=False) for _, part in parts):
        raise GroundingLoraError(
            f"adapter {adapter_name!r} already carries a LoRA; merge_adapter_lora() or unload_adapter_lora() first"
        )
    targets = [(prefix, part, _resolve_targets(part, settings)) for prefix, part in lora_parts(parts, settings)]
    requires_grad = {key: p.requires_grad for key, p in adapter_parameters(unet, adapter_name).items()}
    for _, part, names in targets:
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=names, init_lora_weights=True)
        inject_adapter_in_model(config, part, adapter_name=PEFT_ADAPTER_NAME)
    for param in adapter_parameters(unet, adapter_name).values():
        param.requires_grad_(False)
    attached = AttachedLora(settings, parent, requires_grad)
    for _, part, _ in targets:
        hook = partial(_keep_active, [wrapper for _, wrapper in _wrappers(part)])
        attached.hooks.append(part.register_forward_pre_hook(hook))
    adapter.lora = attached
    unet.position_net.token_cache.pop(adapter_name, None)


def detach_lora(unet: nn.Module, adapter_name: str, *, merge: bool) -> None:
    """Put every wrapped layer's ``base_layer`` back (after folding the factors in, with ``merge``); unfreeze."""
    attached = attached_lora(unet, adapter_name)
    parts = adapter_parts(unet, adapter_name)
    shared = [name for _, part in parts for name, w in _wrappers(part) if set(w.lora_A) != {PEFT_ADAPTER_NAME}]
    if shared:
        raise GroundingLoraError(
            f"layers {shared[:3]} of adapter {adapter_name!r} also hold another LoRA; remove that LoRA first"
        )
    for _, part in parts:
        for name, wrapper in _wrappers(part):
            if merge:
                wrapper.merge(safe_merge=True, adapter_names=[PEFT_ADAPTER_NAME])
            parent_name, _, child = name.rpartition(".")
            setattr(part.get_submodule(parent_name), child, wrapper.get_base_layer())
    _forget(unet, adapter_name, attached)


def _forget(unet: nn.Module, adapter_name: str, attached: AttachedLora) -> None:
    """Drop the book-keeping of a LoRA whose layers are gone; the adapter's trainability is as before."""
    for _, part in adapter_parts(unet, adapter_name):
        if hasattr(part, "peft_config"):
            del part.peft_config
    for hook in attached.hooks:
        hook.remove()
    for key, param in adapter_parameters(unet, adapter_name).items():
        param.requires_grad_(attached.requires_grad.get(key, param.requires_grad))
    grounding_adapters(unet)[adapter_name].lora = None
    unet.position_net.token_cache.pop(adapter_name, None)


def attached_lora(unet: nn.Module, adapter_name: str) -> AttachedLora:
    """The LoRA on ``adapter_name``; :class:`GroundingLoraError` when it has none."""
    adapter = grounding_adapters(unet).get(adapter_name)
    if adapter is None:
        raise GroundingLoraError(f"no grounding adapter named {adapter_name!r} is loaded")
    if adapter.lora is not None and not any(_wrappers(part) for _, part in adapter_parts(unet, adapter_name)):
        # diffusers' unload_lora_weights() strips every peft layer, grounding LoRAs included
        logger.warning("The LoRA of adapter %r was removed from outside gligen-ext.", adapter_name)
        _forget(unet, adapter_name, adapter.lora)
    if adapter.lora is None:
        raise GroundingLoraError(
            f"adapter {adapter_name!r} carries no LoRA; add_adapter_lora() or load_adapter_lora() first"
        )
    return adapter.lora


def lora_parts(parts: list[tuple[str, nn.Module]], settings: LoraSettings) -> list[tuple[str, nn.Module]]:
    """The adapter parts a LoRA goes into: every gated layer, and the tokenizers with ``position_net``."""
    return [(p, m) for p, m in parts if settings.position_net or not isinstance(m, GroundingTokenizer)]


def _resolve_targets(part: nn.Module, settings: LoraSettings) -> list[str]:
    """Full names of the linear layers of ``part`` to wrap: all of a tokenizer's, the named ones of a gated layer."""
    linears = [name for name, module in part.named_modules() if isinstance(module, nn.Linear)]
    if isinstance(part, GroundingTokenizer):
        return linears
    resolved = []
    for target in settings.targets:
        matches = [name for name in linears if name == target or name.endswith(f".{target}")]
        if not matches:
            raise GroundingLoraError(
                f"target {target!r} names no linear layer of a gated layer; choose from {', '.join(linears)}"
            )
        resolved += matches
    return sorted(set(resolved))


def _wrappers(part: nn.Module, *, ours: bool = True) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the peft LoRA layers inside ``part``: those holding a grounding LoRA, or any with ``ours``
    False."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # without peft nothing can be attached
        return []
    return [
        (name, module)
        for name, module in part.named_modules()
        if isinstance(module, LoraLayer) and (not ours or PEFT_ADAPTER_NAME in module.lora_A)
    ]


def _keep_active(wrappers: list[nn.Module], module: nn.Module, args: tuple) -> None:
    # diffusers' set_adapters(names) activates only `names` in every peft layer of the UNet; a grounding LoRA is
    # never among them, yet belongs on for as long as it is attached
    for wrapper in wrappers:
        if PEFT_ADAPTER_NAME not in wrapper.active_adapters:
            wrapper.set_adapter(PEFT_ADAPTER_NAME)


