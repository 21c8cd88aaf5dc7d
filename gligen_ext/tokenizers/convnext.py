"""ConvNeXt-Tiny (Liu et al. 2022, "A ConvNet for the 2020s"), the backbone of GLIGEN's spatial-map tokenizers.

Written here because the usual sources need torchvision (or timm, which needs torchvision). Module and parameter
names follow the reference implementation GLIGEN embeds (``downsample_layers``, ``stages``, ``dwconv``, ``norm``,
``pwconv1``, ``pwconv2``, ``gamma``), so the backbone of an official GLIGEN checkpoint loads key for key. The
classification head and final norm are absent, as in GLIGEN: the output is the last stage's feature map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

CONVNEXT_TINY_DEPTHS = (3, 3, 9, 3)
CONVNEXT_TINY_WIDTHS = (96, 192, 384, 768)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map, with ``weight``/``bias`` of shape (C,)."""

    def __init__(self, channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(rearrange(x, "b c h w -> b h w c"), self.weight.shape, self.weight, self.bias, self.eps)
        return rearrange(x, "b h w c -> b c h w")


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv -> LayerNorm -> 4x MLP (GELU) -> layer scale ``gamma``, plus the input. (B, C, H, W)."""

    def __init__(self, channels: int, *, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, kernel_size=7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = rearrange(self.dwconv(x), "b c h w -> b h w c")
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + rearrange(y, "b h w c -> b c h w")


class ConvNeXt(nn.Module):
    """(B, in_channels, H, W) -> (B, widths[-1], H / 32, W / 32); H and W must be multiples of 32."""

    def __init__(
        self,
        in_channels: int = 3,
        *,
        depths: Sequence[int] = CONVNEXT_TINY_DEPTHS,
        widths: Sequence[int] = CONVNEXT_TINY_WIDTHS,
    ) -> None:
        super().__init__()
        stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(widths[0])
        )
        self.downsample_layers = nn.ModuleList([stem])
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            downsample = nn.Conv2d(width_in, width_out, kernel_size=2, stride=2)
            self.downsample_layers.append(nn.Sequential(ChannelsFirstLayerNorm(width_in), downsample))
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(width) for _ in range(depth))) for depth, width in zip(depths, widths)
        )
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return x


def _init_weights(module: nn.Module) -> None:
    # the reference initialisation (truncated normal, std 0.02); trained weights replace it when converted
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def convnext_tiny_backbone(in_channels: int, *, grid_size: int, resize_input: int) -> ConvNeXt:
    """GLIGEN's spatial backbone: (B, in, R, R) -> (B, 768, R / 32, R / 32); ``R = 32 * grid_size`` (256 -> 8x8)."""
    if resize_input != 32 * grid_size:
        raise ValueError(
            f"the convnext_tiny backbone downsamples 32x: resize_input must be 32 * grid_size = {32 * grid_size}, "
            f"got {resize_input}"
        )
    return ConvNeXt(in_channels)
