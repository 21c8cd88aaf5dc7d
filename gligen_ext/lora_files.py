"""Grounding-LoRA files: the low-rank factors only, keyed like the parent adapter's own file, plus metadata naming
the parent; loading checks that the parent loaded is the one the LoRA was trained on."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from . import __version__
from .adapters import (
    LORA_METADATA_KEY,
    METADATA_KEY,
    AdapterFileError,
    AdapterMismatchError,
    _open_safetensors,
    _resolve_dtype,
    write_safetensors,
)
from .inject import adapter_parts, grounding_adapters
from .lora import (
    PEFT_ADAPTER_NAME,
    LoraParentMismatchError,
    LoraSettings,
    attach_lora,
    attached_lora,
    detach_lora,
    lora_parts,
    parent_identity,
)

logger = logging.getLogger(__name__)

LORA_WEIGHTS_NAME = "grounding_lora.safetensors"
LORA_FORMAT_VERSION = 1


def save_adapter_lora(
    unet: nn.Module,
    path: str | os.PathLike,
    *,
    adapter_name: str = "default",
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Write the LoRA of ``adapter_name`` (its factors only) to ``path``; a folder gets ``grounding_lora.safetensors``.

    The metadata records rank, alpha, targets and the parent's identity (structure hash, weights hash, file name).
    ``dtype``: ``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype (default: as held). Written atomically.
    """
    from peft import get_peft_model_state_dict

    attached = attached_lora(unet, adapter_name)
    path = Path(path)
    path = path / LORA_WEIGHTS_NAME if path.is_dir() else path
    target_dtype = _resolve_dtype(dtype)
    tensors = {
        f"{prefix}.{key}": value.detach().to("cpu", target_dtype or value.dtype).contiguous()
        for prefix, part in lora_parts(adapter_parts(unet, adapter_name), attached.settings)
        for key, value in get_peft_model_state_dict(part, adapter_name=PEFT_ADAPTER_NAME).items()
    }
    config = {
        "format_version": LORA_FORMAT_VERSION,
        "library": f"gligen-ext {__version__}",
        "adapter_name": adapter_name,
        **asdict(attached.settings),
        "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch."),
        "parent": attached.parent,
    }
    return write_safetensors(path, tensors, {LORA_METADATA_KEY: json.dumps(config)})


def read_lora_config(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a grounding-LoRA file, without loading its weights."""
    path = Path(path)
    with _open_safetensors(path) as handle:
        return _lora_config(path, handle.metadata())


def load_adapter_lora(
    unet: nn.Module, path: str | os.PathLike, *, adapter_name: str | None = None, strict: bool = True
) -> str:
    """Load a LoRA file on top of its parent adapter, already loaded as ``adapter_name`` (default: the name the
    LoRA was saved under). Returns that name.

    Raises :class:`LoraParentMismatchError` when no such adapter is loaded or it differs from the parent the LoRA
    was trained on (modalities, widths, base UNet, or weights; with ``strict=False`` differing weights only warn).
    The UNet is left unchanged when loading fails.
    """
    path = Path(path)
    path = path / LORA_WEIGHTS_NAME if path.is_dir() else path
    with _open_safetensors(path) as handle:
        config = _lora_config(path, handle.metadata())
        name = adapter_name or config["adapter_name"]
        settings = LoraSettings(config["rank"], config["alpha"], tuple(config["targets"]), config["position_net"])
        parent = _check_parent(unet, name, config["parent"], path, strict=strict)
        attach_lora(unet, name, settings, parent)
        try:
            _copy_lora_weights(unet, name, handle, path)
        except BaseException:
            detach_lora(unet, name, merge=False)
            raise
    return name


def copy_adapter_lora_weights(unet: nn.Module, path: str | os.PathLike, *, adapter_name: str = "default") -> None:
    """Copy a LoRA file's factors, in place, into the LoRA already attached to ``adapter_name`` (same settings).

    Unlike :func:`load_adapter_lora` the parameter objects stay the same, so an optimizer holding them (a resumed
    training run) keeps working."""
    path = Path(path)
    path = path / LORA_WEIGHTS_NAME if path.is_dir() else path
    with _open_safetensors(path) as handle:
        _lora_config(path, handle.metadata())
        _copy_lora_weights(unet, adapter_name, handle, path)


def _lora_config(path: Path, metadata: dict[str, str] | None) -> dict[str, Any]:
    if not metadata or LORA_METADATA_KEY not in metadata:
        is_adapter = bool(metadata) and METADATA_KEY in metadata
        hint = "; it is a grounding adapter: load it with load_grounding_adapter()" if is_adapter else ""
        raise AdapterFileError(f"{path.name} is not a gligen-ext grounding-LoRA file{hint}")
    try:
        config = json.loads(metadata[LORA_METADATA_KEY])
    except json.JSONDecodeError as error:
        raise AdapterFileError(f"{path.name}: its grounding-LoRA config is not valid JSON") from error
    if config.get("format_version", 0) > LORA_FORMAT_VERSION:
        raise AdapterFileError(
            f"{path.name} uses LoRA format {config['format_version']}; this gligen-ext reads up to "
            f"{LORA_FORMAT_VERSION}, upgrade gligen-ext"
        )
    return config


def _check_parent(unet: nn.Module, name: str, expected: dict[str, Any], path: Path, *, strict: bool) -> dict:
    """The loaded parent's identity, after checking it is the one the LoRA in ``path`` was trained on."""
    trained_on = f"{expected.get('file') or 'an adapter'} ({', '.join(expected['modalities'])})"
    if name not in grounding_adapters(unet):
        raise LoraParentMismatchError(
            f"{path.name}: no grounding adapter named {name!r} is loaded; load the adapter this LoRA was trained on, "
            f"{trained_on}, first (or pass adapter_name=)"
        )
    actual = parent_identity(unet, name)
    if actual["structure_sha256"] != expected["structure_sha256"]:
        raise LoraParentMismatchError(
            f"{path.name}: trained on {trained_on}, but adapter {name!r} ({', '.join(actual['modalities'])}) differs "
            "in modalities, tokenizer options, widths or base UNet; load the adapter it was trained on"
        )
    if actual["weights_sha256"] != expected["weights_sha256"]:
        message = (
            f"{path.name}: trained on the weights of {trained_on}, but adapter {name!r} holds other weights "
            f"(loaded from {actual['file'] or 'no file'}); load the same adapter file"
        )
        if strict:
            raise LoraParentMismatchError(message + ", or pass strict=False to apply it anyway")
        logger.warning("%s; applying it anyway (strict=False).", message)
    return actual


def _copy_lora_weights(unet: nn.Module, adapter_name: str, handle: Any, path: Path) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    stored = set(handle.keys())
    parts = lora_parts(adapter_parts(unet, adapter_name), grounding_adapters(unet)[adapter_name].lora.settings)
    expected = {
        f"{prefix}.{key}": value
        for prefix, part in parts
        for key, value in get_peft_model_state_dict(part, adapter_name=PEFT_ADAPTER_NAME).items()
    }
    missing, unexpected = sorted(set(expected) - stored), sorted(stored - set(expected))
    if missing or unexpected:
        raise AdapterMismatchError(
            f"{path.name}: keys do not match the LoRA its config describes; missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for prefix, part in parts:
        state = {}
        for key, value in get_peft_model_state_dict(part, adapter_name=PEFT_ADAPTER_NAME).items():
            try:
                tensor = handle.get_tensor(f"{prefix}.{key}")
            except SafetensorError as error:
                raise AdapterFileError(f"{path.name}: tensor {prefix}.{key} is unreadable; it is corrupt") from error
            if tensor.shape != value.shape or not torch.isfinite(tensor).all():
                raise AdapterMismatchError(
                    f"{path.name}: {prefix}.{key} has shape {tuple(tensor.shape)} (expected {tuple(value.shape)}) "
                    "or holds NaN/inf"
                )
            state[key] = tensor
        set_peft_model_state_dict(part, state, adapter_name=PEFT_ADAPTER_NAME)
