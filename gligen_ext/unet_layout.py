"""The plain diffusers UNet a set of GLIGEN weights belongs to, built on the meta device (no memory, no init cost).

A converted adapter file records the shape of its base UNet (``inject.unet_fingerprint``); building that UNet and
adding a gligen-ext adapter to it gives the adapter's exact key names, shapes and config, with the same code that
loads adapter files.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from .checkpoint_formats import ConversionError, SourceWeights
from .inject import transformer_blocks


def template_unet(weights: SourceWeights, *, in_channels: int) -> UNet2DConditionModel:
    """The plain (no GLIGEN) diffusers UNet the weights belong to, on the meta device.

    From the source's ``config.json`` when it has one, else inferred from the key names and shapes. ConversionError
    when the fusers do not sit exactly on that UNet's transformer blocks.
    """
    if weights.unet_config is not None:
        # drop diffusers' bookkeeping of defaulted keys: it would bring a stored attention_type back
        config = {k: v for k, v in weights.unet_config.items() if k != "_use_default_values"}
        config |= {"attention_type": "default"}
    else:
        config = infer_unet_config(weights.tensors) | {"in_channels": in_channels}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    fused = {k.split(".fuser.")[0] for k in weights.tensors if ".fuser." in k}
    blocks = {path for path, _ in transformer_blocks(unet)}
    if fused != blocks:
        raise ConversionError(
            "the fuser keys do not fit the UNet layout they imply: "
            f"no transformer block for {sorted(fused - blocks)[:4]}, no fuser for {sorted(blocks - fused)[:4]}"
        )
    return unet


def infer_unet_config(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A diffusers UNet config with the key layout of ``tensors`` (diffusers names).

    Level widths come from resnets where present, else from the fusers, else from a neighbouring level; ``conv_in``
    feeds the first level. A file holding fusers only (ComfyUI's) thus gets SD's layout right, since every SD level
    but the last has attention and the last matches the middle block.
    """
    keys = list(tensors)
    down, up = _attention_rows(keys, "down_blocks"), _attention_rows(keys, "up_blocks")
    levels = max([*down, *up], default=-1) + 1
    widths = [_level_width(tensors, b, levels) for b in range(levels)]
    widths = _fill_gaps(widths)
    resnets = {int(m.group(1)) for k in keys if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
    # a down level has one attention per resnet; an up level has one more
    rows = [r + 1 for level in down.values() for r in level] + [r for level in up.values() for r in level]
    has_attention = [bool(down.get(b)) or bool(up.get(levels - 1 - b)) for b in range(levels)]
    mid = "mid_block.attentions.0.transformer_blocks.0.fuser.linear.weight"
    if mid in tensors:
        mid_type = "UNetMidBlock2DCrossAttn"
    else:
        mid_type = "UNetMidBlock2D" if any(k.startswith("mid_block.") for k in keys) else None
    linear = next(v for k, v in tensors.items() if k.endswith(".fuser.linear.weight"))
    return {
        "sample_size": 64,
        "out_channels": tensors["conv_out.weight"].shape[0] if "conv_out.weight" in tensors else 4,
        "layers_per_block": len(resnets) or max(rows, default=2),
        "block_out_channels": tuple(widths),
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)),
        "mid_block_type": mid_type,
        "cross_attention_dim": linear.shape[1],
        "transformer_layers_per_block": tuple(_transformer_depth(keys, b) for b in range(levels)),
        "attention_head_dim": 1,  # head counts shape no parameter; the UNet the adapter is loaded into decides
        "norm_num_groups": math.gcd(32, *widths),
    }


def _attention_rows(keys: list[str], blocks: str) -> dict[int, set[int]]:
    """level -> attention indices, for ``down_blocks`` or ``up_blocks`` (a level without attention: empty set)."""
    found: dict[int, set[int]] = {}
    for key in keys:
        if m := re.match(rf"{blocks}\.(\d+)\.", key):
            found.setdefault(int(m.group(1)), set())
        if m := re.match(rf"{blocks}\.(\d+)\.attentions\.(\d+)\.", key):
            found[int(m.group(1))].add(int(m.group(2)))
    return found


def _level_width(tensors: dict[str, torch.Tensor], level: int, levels: int) -> int | None:
    fuser = "attentions.0.transformer_blocks.0.fuser.linear.weight"
    candidates = [f"down_blocks.{level}.resnets.0.conv1.weight", f"down_blocks.{level}.{fuser}"]
    candidates.append(f"up_blocks.{levels - 1 - level}.{fuser}")
    if level == 0:
        candidates.insert(0, "conv_in.weight")
    if level == levels - 1:
        candidates.append(f"mid_block.{fuser}")
    return next((tensors[c].shape[0] for c in candidates if c in tensors), None)


def _fill_gaps(widths: list[int | None]) -> list[int]:
    """Levels with no clue take the nearest known width (they hold no GLIGEN weights, so only the config needs it)."""
    known = [(i, w) for i, w in enumerate(widths) if w is not None]
    if not known:
        raise ConversionError("cannot tell any UNet level's width from the checkpoint")
    return [w if w is not None else min(known, key=lambda item: abs(item[0] - i))[1] for i, w in enumerate(widths)]


def _transformer_depth(keys: list[str], level: int) -> int:
    prefix = f"down_blocks.{level}.attentions.0.transformer_blocks."
    return len({k[len(prefix) :].split(".")[0] for k in keys if k.startswith(prefix)}) or 1
