"""Adapter files: one ``.safetensors`` holding only adapter weights, with a JSON config in its metadata.

Loading never unpickles anything, checks the file against the UNet it goes into, and leaves the UNet untouched when it
fails.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .inject import (
    GroundingAdapterError,
    adapter_parameters,
    adapter_parts,
    add_grounding_adapter,
    grounding_adapters,
    remove_grounding_adapter,
    unet_fingerprint,
)

ADAPTER_WEIGHTS_NAME = "grounding_adapter.safetensors"
METADATA_KEY = "gligen_ext_config"
LORA_METADATA_KEY = "gligen_ext_lora"  # the metadata key of grounding-LoRA files (gligen_ext.lora)
FORMAT_VERSION = 1
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class AdapterFileError(ValueError):
    """An adapter file is missing, is not a safetensors file, or is truncated or corrupt."""


class AdapterMismatchError(ValueError):
    """An adapter file does not fit the UNet it is loaded into."""


def save_grounding_adapter(
    unet: nn.Module,
    path: str | os.PathLike,
    *,
    adapter_name: str = "default",
    dtype: str | torch.dtype | None = None,
    base_model: str | None = None,
) -> Path:
    """Write one adapter's weights (only those) to ``path``; a folder gets ``grounding_adapter.safetensors``.

    ``dtype`` is ``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype (default: as held). The write is atomic: a crash
    never leaves a torn file. Returns the file path.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_WEIGHTS_NAME
    target_dtype = _resolve_dtype(dtype)
    params = adapter_parameters(unet, adapter_name)
    if any(hasattr(m, "base_layer") for _, part in adapter_parts(unet, adapter_name) for m in part.modules()):
        raise GroundingAdapterError(
            f"adapter {adapter_name!r} carries a LoRA: merge_adapter_lora() folds it in before saving the adapter, "
            "save_adapter_lora() saves the LoRA on its own, unload_adapter_lora() drops it"
        )
    tensors = {k: p.detach().to("cpu", target_dtype or p.dtype).contiguous() for k, p in params.items()}
    config = adapter_config(unet, adapter_name)
    config["dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    config["base_model"] = base_model
    return write_safetensors(path, tensors, {METADATA_KEY: json.dumps(config)})


def write_adapter_file(tensors: dict[str, torch.Tensor], config: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write adapter ``tensors`` (file key -> CPU tensor) with ``config`` as their metadata, atomically.

    ``config["dtype"]`` is set from the tensors. For adapters built without a live UNet (``gligen_ext.convert``).
    """
    config = {**config, "dtype": str(next(iter(tensors.values())).dtype).removeprefix("torch.")}
    return write_safetensors(Path(path), tensors, {METADATA_KEY: json.dumps(config)})


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` with ``metadata`` to ``path`` atomically: a crash never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata={"format": "pt", **metadata})
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes 0600; an adapter file is shared like any other
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def adapter_config(unet: nn.Module, adapter_name: str) -> dict[str, Any]:
    """The JSON-serialisable description stored in an adapter file's metadata."""
    adapter = grounding_adapters(unet)[adapter_name]
    first = next(iter(adapter.tokenizers.values()))
    first_layer = next(layer for _, layer in adapter_parts(unet, adapter_name))
    return {
        "format_version": FORMAT_VERSION,
        "library": f"gligen-ext {__version__}",
        "adapter_name": adapter_name,
        "modalities": {
            m: {"options": t.options, "default_beta": t.default_beta} for m, t in adapter.tokenizers.items()
        },
        "dims": {
            "token_dim": first.dims.token_dim,
            "positive_len": first.dims.positive_len,
            "conv_in_channels": first.dims.conv_in_channels,
        },
        "base": unet_fingerprint(unet),
        # absent from files of earlier versions and from converted GLIGEN weights: GLIGEN's layer, no positions
        "visual_position_freqs": first_layer.position_freqs,
        "ff_mult": first_layer.ff_mult,  # absent from earlier files: GLIGEN's 4
    }


def read_adapter_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read the config stored in an adapter file, without loading its weights."""
    with _open_safetensors(Path(path)) as handle:
        return _config_from_metadata(Path(path), handle.metadata())


def load_grounding_adapter(
    unet: nn.Module,
    path_or_hub_id: str | os.PathLike,
    *,
    adapter_name: str | None = None,
    weight: float = 1.0,
    weight_name: str = ADAPTER_WEIGHTS_NAME,
) -> str:
    """Load an adapter file (a path, a folder, or a Hugging Face hub id) onto ``unet``; returns its adapter name.

    The UNet may be built from a config or by ``from_pretrained``; it is left unchanged if loading fails.
    """
    path = resolve_adapter_path(path_or_hub_id, weight_name=weight_name)
    with _open_safetensors(path) as handle:
        config = _config_from_metadata(path, handle.metadata())
        check_fits(config, unet, path)
        name = adapter_name or config.get("adapter_name") or "default"
        if name in grounding_adapters(unet):
            raise GroundingAdapterError(
                f"an adapter named {name!r} is already loaded; pass adapter_name= to load {path.name} beside it"
            )
        add_grounding_adapter(
            unet,
            list(config["modalities"]),
            adapter_name=name,
            positive_len=config["dims"]["positive_len"],
            weight=weight,
            tokenizer_options={m: spec["options"] for m, spec in config["modalities"].items()},
            visual_position_freqs=config.get("visual_position_freqs", 0),
            ff_mult=config.get("ff_mult", 4),
        )
        try:
            _copy_weights(handle, adapter_parameters(unet, name), path)
        except BaseException:
            remove_grounding_adapter(unet, name)
            raise
    grounding_adapters(unet)[name].source = path.name
    return name


def resolve_adapter_path(path_or_hub_id: str | os.PathLike, *, weight_name: str = ADAPTER_WEIGHTS_NAME) -> Path:
    """A local file, a folder holding ``weight_name``, or a hub id downloaded through ``huggingface_hub``."""
    path = Path(path_or_hub_id)
    if path.is_dir():
        path = path / weight_name
    if path.is_file():
        return path
    text = str(path_or_hub_id)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/")) and not path.suffix
    if not looks_like_hub_id:
        raise AdapterFileError(f"adapter file {text!r} does not exist")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(text, weight_name))
    except Exception as error:  # offline, unknown repo, missing file: all mean "cannot get it"
        raise AdapterFileError(
            f"adapter {text!r} is neither a local file nor reachable on the Hugging Face hub ({type(error).__name__})"
        ) from error


def check_fits(config: dict[str, Any], unet: nn.Module, path: Path) -> None:
    """Raise :class:`AdapterMismatchError` when the adapter was made for a differently shaped UNet."""
    expected, actual = config["base"], unet_fingerprint(unet)
    for key, label in (
        ("cross_attention_dim", "cross_attention_dim"),
        ("conv_in_channels", "conv_in channels"),
        ("num_transformer_blocks", "transformer blocks"),
        ("block_widths", "transformer block widths"),
    ):
        if expected.get(key) != actual.get(key):
            raise AdapterMismatchError(
                f"{path.name}: adapter was trained for {label} {expected.get(key)}, this UNet has {actual.get(key)}; "
                "load it onto the base model it was trained with"
            )


def _copy_weights(handle: Any, params: dict[str, nn.Parameter], path: Path) -> None:
    stored = set(handle.keys())
    missing, unexpected = sorted(set(params) - stored), sorted(stored - set(params))
    if missing or unexpected:
        raise AdapterMismatchError(
            f"{path.name}: keys do not match the adapter its config describes; "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    with torch.no_grad():
        for key, param in params.items():
            try:
                tensor = handle.get_tensor(key)
            except SafetensorError as error:
                raise AdapterFileError(f"{path.name}: tensor {key!r} is unreadable; the file is corrupt") from error
            if tensor.shape != param.shape:
                raise AdapterMismatchError(
                    f"{path.name}: {key} has shape {tuple(tensor.shape)}, this UNet expects {tuple(param.shape)}"
                )
            if not torch.isfinite(tensor).all():
                raise AdapterFileError(f"{path.name}: tensor {key!r} holds NaN or inf; the file is corrupt")
            param.copy_(tensor)


def _open_safetensors(path: Path) -> Any:
    if not path.is_file():
        raise AdapterFileError(f"adapter file '{path}' does not exist")
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(
            f"{path.name} is not a readable safetensors adapter file (truncated, corrupt, or another format): {error}"
        ) from error


def _config_from_metadata(path: Path, metadata: dict[str, str] | None) -> dict[str, Any]:
    if metadata and LORA_METADATA_KEY in metadata:
        raise AdapterFileError(
            f"{path.name} is a grounding LoRA, not an adapter; load its parent adapter, then the LoRA with "
            "load_adapter_lora()"
        )
    if not metadata or METADATA_KEY not in metadata:
        raise AdapterFileError(
            f"{path.name} is a safetensors file without a gligen-ext config; convert GLIGEN weights with "
            "`gligen-ext convert` first"
        )
    try:
        config = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise AdapterFileError(f"{path.name}: its gligen-ext config is not valid JSON") from error
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise AdapterFileError(
            f"{path.name} uses adapter format {config['format_version']}; this gligen-ext reads up to "
            f"{FORMAT_VERSION}, "
            "upgrade gligen-ext"
        )
    return config


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]
