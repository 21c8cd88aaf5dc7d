"""Grow a trained UNet2DConditionModel to more layers per block without changing what it computes.

A continuation (``diffusion.init_from``) whose ``unet.layers_per_block`` is larger than the saved model's starts from
that model with the added layers as identities, so that the capacity grows while nothing already learned is lost
(the function-preserving growth of Net2Net, Chen et al. 2016, arXiv 1511.05641, done with zero-initialised
residual branches as in ControlNet's zero convolutions).

How diffusers wires the levels decides where the added layers go. A down level of ``n`` layers hands its ``n``
outputs (and its downsampler's) to the up level of the same size, whose ``n + 1`` resnets take them last first.
An added down layer (a resnet whose second convolution is zero, a transformer whose ``proj_out`` is zero) repeats
the level's last output, so the up level's first resnet still sees what it saw. Each added up resnet passes its
input through and ignores its skip: its 1x1 shortcut is ``[I | 0]`` over ``cat(hidden, skip)``, its second
convolution is zero. The old up resnets after them take the skips they took before.
"""

from __future__ import annotations

import re

import torch
from diffusers import UNet2DConditionModel
from torch import nn

_LAYER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$")


def per_level(unet: UNet2DConditionModel) -> list[int]:
    """Layers per block of each down level, finest first."""
    depth = unet.config.layers_per_block
    levels = len(unet.config.block_out_channels)
    return [depth] * levels if isinstance(depth, int) else list(depth)


def deepening_error(source: UNet2DConditionModel, target: UNet2DConditionModel) -> str | None:
    """Why ``source`` cannot grow into ``target`` (None: it can)."""
    ignore = {"layers_per_block", "_name_or_path", "_use_default_values", "_diffusers_version", "_class_name"}
    others = {key for key in {*source.config, *target.config} - ignore
              if _plain(source.config.get(key)) != _plain(target.config.get(key))}
    if others:
        return f"they differ in {', '.join(sorted(others))}, not only in layers_per_block"
    if any(new < old for old, new in zip(per_level(source), per_level(target))):
        return f"layers_per_block {per_level(target)} is shallower than the saved {per_level(source)} at some level"
    return None


def deepen_unet(source: UNet2DConditionModel, target: UNet2DConditionModel) -> list[str]:
    """Load ``source``'s weights into ``target``, a UNet with the same config but at least as many layers per
    block, so that ``target(x, t, c) == source(x, t, c)``. Returns the names of the added (identity) layers."""
    if error := deepening_error(source, target):
        raise ValueError(f"cannot deepen the UNet: {error}")
    old, new = per_level(source), per_level(target)
    levels = len(old)
    added = [f"down_blocks.{level}.{kind}.{i}" for level in range(levels) for i in range(old[level], new[level])
             for kind in ("resnets", "attentions")]
    for level in range(levels):
        up, extra = levels - 1 - level, new[level] - old[level]
        added += [f"up_blocks.{up}.{kind}.{i}" for i in range(1, 1 + extra) for kind in ("resnets", "attentions")]
    state = {_renamed(key, old, new): value for key, value in source.state_dict().items()}
    missing, unexpected = target.load_state_dict(state, strict=False)
    stray = [key for key in missing if not any(key.startswith(name + ".") for name in added)]
    if unexpected or stray:
        raise ValueError(f"cannot deepen the UNet: weights left over {unexpected[:3]} or unfilled {stray[:3]}")
    modules = dict(target.named_modules())
    for name in added:
        if name in modules:  # a level without cross-attention has no attentions
            _make_identity(modules[name])
    return [name for name in added if name in modules]


def _renamed(key: str, old: list[int], new: list[int]) -> str:
    """The key of ``key``'s weight in the deeper UNet: up levels shift their later layers past the added ones."""
    match = _LAYER.match(key)
    if not match or match.group(1) == "down_blocks":
        return key
    _, up, kind, index, rest = match.groups()
    level = len(old) - 1 - int(up)
    index = int(index)
    shifted = index if index == 0 else index + new[level] - old[level]
    return f"up_blocks.{up}.{kind}.{shifted}.{rest}"


@torch.no_grad()
def _make_identity(layer: nn.Module) -> None:
    """Zero the residual branch of a resnet or transformer; a resnet's channel-changing shortcut keeps the
    hidden channels (the first ``out_channels`` of its input) and drops the skip."""
    output = layer.conv2 if hasattr(layer, "conv2") else layer.proj_out
    output.weight.zero_()
    if output.bias is not None:
        output.bias.zero_()
    shortcut = getattr(layer, "conv_shortcut", None)
    if shortcut is not None:
        shortcut.weight.zero_()
        channels = shortcut.weight.shape[0]
        shortcut.weight[:, :channels].copy_(torch.eye(channels).reshape(channels, channels, 1, 1))
        if shortcut.bias is not None:
            shortcut.bias.zero_()


def _plain(value: object) -> object:
    return list(value) if isinstance(value, (list, tuple)) else value
