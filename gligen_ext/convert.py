"""Convert published GLIGEN weights into gligen-ext adapter files (:mod:`gligen_ext.export` goes the other way).

``convert_checkpoint`` reads an official GLIGEN checkpoint, a ComfyUI pruned GLIGEN file or a diffusers GLIGEN UNet
(:mod:`gligen_ext.checkpoint_formats`), tells the modality from the position net's keys, builds on the meta device
the plain diffusers UNet those weights belong to, adds a gligen-ext adapter to it, and fills the adapter from the
checkpoint. Every checkpoint key is accounted for: adapter keys must match one to one (names and shapes), base-UNet
keys are ignored by rule (they exist in the plain UNet), anything else is reported by name.

Inpainting checkpoints were trained with a 9-channel first conv (latent 4 + masked latent 4 + mask 1). That conv is
part of the base UNet, not of the adapter, so it is written beside the adapter as ``<out>.conv_in.safetensors``;
:func:`load_conv_in_weights` puts it into a 9-channel UNet.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .adapters import (
    DTYPES,
    AdapterMismatchError,
    adapter_config,
    write_adapter_file,
    write_safetensors,
)
from .checkpoint_formats import ConversionError, read_source
from .inject import adapter_parameters, add_grounding_adapter
from .unet_layout import template_unet

logger = logging.getLogger(__name__)

SPATIAL = ("depth", "canny", "hed", "normal", "semantic")
DESCRIPTIONS = {"boxes": "boxes (text)", "image_boxes": "image_boxes (text + image)", "keypoints": "keypoints"}
# what the official spatial position nets call their ConvNeXt, and what gligen-ext's spatial tokenizer calls it
POSITION_RENAMES = {m: (("convnext_tiny_backbone.", "backbone."),) for m in SPATIAL}
CONVNEXT_STRIDE = 32  # ConvNeXt-T turns a R x R map into (R / 32)^2 tokens
INPAINT_CHANNELS = 9


@dataclass
class ConvertedAdapter:
    """An adapter built from a checkpoint: file keys -> tensors, the config for the file, and what was found."""

    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    modality: str
    source_label: str
    conv_in: dict[str, torch.Tensor] | None = None  # inpainting: the trained 9-channel first conv (a base weight)

    @property
    def num_gated_layers(self) -> int:
        return self.config["base"]["num_transformer_blocks"]

    def describe(self) -> str:
        """e.g. ``official GLIGEN checkpoint, modality boxes (text), 16 gated layers``."""
        kind = DESCRIPTIONS.get(self.modality, f"{self.modality} (map)")
        inpainting = ", inpainting" if self.conv_in is not None else ""
        return f"{self.source_label}, modality {kind}{inpainting}, {self.num_gated_layers} gated layers"


def convert_checkpoint(source: str | os.PathLike, *, modality: str | None = None) -> ConvertedAdapter:
    """Read GLIGEN weights (file, folder or hub id) and build the equivalent gligen-ext adapter.

    ``modality`` overrides what the keys and the official config say; it is needed for depth and canny checkpoints
    whose config was stripped, because their keys are identical.
    """
    weights = read_source(source)
    fusers = {k: v for k, v in weights.tensors.items() if ".fuser." in k}
    position = {
        k.removeprefix("position_net."): v for k, v in weights.tensors.items() if k.startswith("position_net.")
    }
    downsampler = {k: v for k, v in weights.tensors.items() if k.startswith("downsample_net.")}
    base = {
        k: v
        for k, v in weights.tensors.items()
        if ".fuser." not in k and not k.startswith(("position_net.", "downsample_net."))
    }
    if not fusers or not position:
        missing = "fuser (*.fuser.*)" if not fusers else "position net (position_net.*)"
        raise ConversionError(f"{source}: no {missing} weights; this is not a GLIGEN checkpoint")
    chosen = choose_modality(position, downsampler, hint=weights.grounding_hint, override=modality)
    first_conv = base.get("conv_in.weight")
    inpainting = first_conv is not None and chosen not in SPATIAL and first_conv.shape[1] != 4
    if inpainting and first_conv.shape[1] != INPAINT_CHANNELS:
        raise ConversionError(
            f"conv_in.weight has {first_conv.shape[1]} input channels; GLIGEN uses 4, or 9 to inpaint"
        )

    unet = template_unet(weights, in_channels=INPAINT_CHANNELS if inpainting else 4)
    unknown = sorted(set(base) - set(unet.state_dict()))
    if unknown:
        raise ConversionError(f"{len(unknown)} keys belong neither to the base UNet nor to GLIGEN: {unknown[:8]}")
    logger.info("%s: %d base-UNet tensors skipped (they belong to the base model)", weights.label, len(base))
    options, positive_len = tokenizer_options(chosen, position, learned_downsampler=bool(downsampler))
    with torch.device("meta"):
        add_grounding_adapter(unet, chosen, positive_len=positive_len, tokenizer_options={chosen: options})
    renames = POSITION_RENAMES.get(chosen, ())
    tensors = dict(fusers) | {f"position_net.{_rename(k, renames)}": v for k, v in position.items()}
    if chosen in SPATIAL:
        tensors |= spatial_first_conv(first_conv, downsampler)
    elif downsampler:
        raise ConversionError(f"downsample_net weights {sorted(downsampler)[:3]} only belong to spatial checkpoints")
    check_matches(tensors, adapter_parameters(unet, "default"))
    config = adapter_config(unet, "default") | {
        "base_model": None,
        "converted_from": {"format": weights.kind, "source": _source_name(source), "inpainting": inpainting},
    }
    conv_in = {"conv_in.weight": first_conv, "conv_in.bias": base["conv_in.bias"]} if inpainting else None
    return ConvertedAdapter(tensors, config, chosen, weights.label, conv_in)


def choose_modality(
    position: dict[str, torch.Tensor],
    downsampler: dict[str, torch.Tensor],
    *,
    hint: str | None = None,
    override: str | None = None,
) -> str:
    """The modality the position-net keys (``position_net.`` stripped) allow, narrowed by the official config's
    ``hint`` and the caller's ``override``; ConversionError when the keys and an override disagree."""
    if "null_positive_feature" in position:
        allowed = {"boxes"}
    elif "null_image_feature" in position:
        allowed = {"image_boxes"}
    elif "keypoint_embeddings" in position:
        allowed = {"keypoints"}
    elif any(k.startswith("convnext_tiny_backbone.") for k in position):
        if "in_conv.weight" in position:
            allowed = {"semantic"}
        elif not downsampler:
            allowed = {"hed"}  # HED's downsampler only resizes the map: no parameters
        elif getattr(downsampler.get("downsample_net.layers.0.weight"), "shape", (0, 1))[1] == 3:
            allowed = {"normal"}
        else:
            allowed = {"depth", "canny"}  # same shapes, different training maps
    else:
        raise ConversionError(f"unknown position_net layout (keys {sorted(position)[:6]}); not a released GLIGEN net")
    for wanted, origin in ((override, "--modality"), (hint, "the checkpoint's config_dict")):
        if wanted is not None and wanted not in allowed:
            raise ConversionError(
                f"{origin} says {wanted!r}, but the weights are a {' or '.join(sorted(allowed))} net"
            )
        if wanted is not None:
            return wanted
    if len(allowed) > 1:
        raise ConversionError(
            "depth and canny checkpoints have identical weights and this one names neither in a config_dict; "
            "pass --modality depth or --modality canny"
        )
    return allowed.pop()


def tokenizer_options(
    modality: str, position: dict[str, torch.Tensor], *, learned_downsampler: bool = True
) -> tuple[dict[str, Any], int | None]:
    """(tokenizer options, positive_len) read from the position net's shapes, so non-default widths load too.

    Spatial options are stored in the adapter file, so loading rebuilds GLIGEN's tokenizer: ConvNeXt-T backbone,
    ``grid_size**2`` tokens from a ``32 * grid_size`` map, and the trained first-conv weight.
    """

    def size(key: str, dim: int, default: int | None) -> int | None:
        # a missing tensor keeps the default here; check_matches then reports it by name
        return position[key].shape[dim] if key in position else default

    first_linear = next((k for k in position if re.fullmatch(r"linears\w*\.0\.weight", k)), "")
    hidden = {"hidden_dim": size(first_linear, 0, 512)}
    if modality in ("boxes", "image_boxes"):
        fourier = {"fourier_freqs": size("null_position_feature", 0, 64) // 8}  # sin, cos x 4 coordinates
        phrase = "null_positive_feature" if modality == "boxes" else "null_text_feature"
        return hidden | fourier, size(phrase, 0, None)
    if modality == "keypoints":
        fourier = {"fourier_freqs": size("null_xy_feature", 0, 32) // 4}  # sin, cos x 2 coordinates
        return hidden | fourier | {"max_persons": size("person_embeddings", 0, 8)}, None
    grid = math.isqrt(size("pos_embedding", 1, 64))
    options = {"backbone": "convnext_tiny", "grid_size": grid, "resize_input": grid * CONVNEXT_STRIDE}
    options |= hidden | {"first_conv_override": True, "downsampler": "learned" if learned_downsampler else "resize"}
    if modality == "semantic":
        options["num_classes"] = size("in_conv.weight", 1, 152)
    return options, None


def spatial_first_conv(
    first_conv: torch.Tensor | None, downsampler: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Official spatial models widen the first conv to ``4 + k`` input channels and train all of it; gligen-ext keeps
    the latent part and the map part as two tokenizer parameters (a conv is linear in its input channels)."""
    if first_conv is None or first_conv.shape[1] <= 4:
        raise ConversionError("a spatial GLIGEN checkpoint needs its widened first conv (input_blocks.0.0.weight)")
    tensors = {
        "position_net.conv_in_latent_weight": first_conv[:, :4].contiguous(),
        "position_net.conv_in_residual_proj.weight": first_conv[:, 4:].contiguous(),
    }
    for key, value in downsampler.items():
        tensors["position_net." + key.replace("downsample_net.layers.", "downsample_net.")] = value
    return tensors


def check_matches(found: dict[str, torch.Tensor], expected: dict[str, nn.Parameter]) -> None:
    """ConversionError naming every missing, unexpected or mis-shaped adapter key."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ConversionError(
            f"the checkpoint does not fill the adapter: {len(missing)} missing {missing[:8]}, "
            f"{len(unexpected)} unexpected {unexpected[:8]}"
        )
    for key, param in expected.items():
        if found[key].shape != param.shape:
            raise ConversionError(
                f"{key} has shape {tuple(found[key].shape)}; the adapter expects {tuple(param.shape)}"
            )


def _source_name(source: str | os.PathLike) -> str:
    """A local file's name (not its private path), or the hub id as given."""
    return Path(source).name if Path(source).exists() else str(source)


def _rename(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def save_converted(
    converted: ConvertedAdapter, out: str | os.PathLike, *, dtype: str | torch.dtype | None = None
) -> list[Path]:
    """Write the adapter (and, for inpainting, ``<out stem>.conv_in.safetensors``); returns the paths written.

    ``dtype``: ``"fp16"``, ``"bf16"``, ``"fp32"`` or a torch dtype; default: as stored in the checkpoint.
    """
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    target = DTYPES[dtype] if isinstance(dtype, str) else dtype

    def cast(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", target or v.dtype).contiguous() for k, v in tensors.items()}

    out = Path(out)
    paths = [write_adapter_file(cast(converted.tensors), converted.config, out)]
    if converted.conv_in is not None:
        note = {"in_channels": INPAINT_CHANNELS, "layout": "latent 4, masked latent 4, mask 1 (1 = keep)"}
        paths.append(
            write_safetensors(conv_in_path(out), cast(converted.conv_in), {"gligen_ext_conv_in": json.dumps(note)})
        )
    return paths


def conv_in_path(adapter_path: str | os.PathLike) -> Path:
    """Where :func:`save_converted` puts an inpainting checkpoint's first conv: ``<stem>.conv_in.safetensors``."""
    path = Path(adapter_path)
    return path.with_name(f"{path.stem}.conv_in.safetensors")


def load_conv_in_weights(unet: nn.Module, path: str | os.PathLike) -> None:
    """Copy an inpainting checkpoint's first conv (``conv_in.weight``, ``conv_in.bias``) into ``unet.conv_in``.

    The UNet must already take 9 input channels (e.g. built with ``in_channels=9``); AdapterMismatchError otherwise.
    """
    path = Path(path)
    tensors = load_file(str(path))
    conv = unet.conv_in
    for key, param in (("conv_in.weight", conv.weight), ("conv_in.bias", conv.bias)):
        if key not in tensors or tensors[key].shape != param.shape:
            found = tuple(tensors[key].shape) if key in tensors else "nothing"
            raise AdapterMismatchError(
                f"{path.name}: {key} is {found}, this UNet's conv_in needs {tuple(param.shape)}; build the UNet with "
                f"in_channels={INPAINT_CHANNELS} for GLIGEN inpainting"
            )
    with torch.no_grad():
        conv.weight.copy_(tensors["conv_in.weight"])
        conv.bias.copy_(tensors["conv_in.bias"])
