"""Spatial maps — depth, HED edges, Canny edges, surface normals, semantic labels — as one tokenizer with presets.

Two paths, as in GLIGEN Sec. 3.2 / App. (spatial conditions):
1. tokens: a conv backbone (ConvNeXt-Tiny in the official checkpoints) turns the map into a ``grid x grid`` feature
   grid; a learned null feature replaces it where there is no map, a position embedding is added, and an MLP gives
   ``grid**2`` grounding tokens;
2. a residual on the UNet's first-conv output: a "downsampler" brings the map to latent resolution and a
   zero-initialised 3x3 conv projects it to ``conv_in`` channels. GLIGEN instead widens ``conv_in`` with extra input
   channels; a convolution is linear in its input channels, so ``conv_in([z ; d]) = conv_in(z) + conv_extra(d)`` and
   the two are the same model. Official checkpoints also retrain conv_in's latent channels: with
   ``first_conv_override`` the tokenizer carries that weight and adds ``conv(z, W_trained - W_base)``, so the model
   returns exactly to the base when the adapter is off, as GLIGEN's sampler restores SD's first conv once beta is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from ..layout import MAP_CHANNELS, Layout
from .base import GroundingDims, GroundingEncoders, GroundingTokenizer, blend_null, mlp, register_tokenizer
from .convnext import convnext_tiny_backbone

# GLIGEN's ConvNeXt-T features are 768 wide; keeping the width lets its MLP and nulls load unchanged
FEATURE_DIM = 768
BACKBONE_CHANNELS = 3  # the backbones see RGB; grey maps are repeated, as GLIGEN's data sets store them


def small_backbone(in_channels: int, *, grid_size: int, resize_input: int) -> nn.Sequential:
    """A light download-free conv net for adapters trained here: (B, in, R, R) -> (B, 768, grid, grid)."""
    layers: list[nn.Module] = []
    channels, size = in_channels, resize_input
    for width in (32, 64, 128, 256, 256, 256):
        if size <= grid_size:
            break
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.SiLU()]
        channels, size = width, (size + 1) // 2
    if size != grid_size:
        raise ValueError(
            f"resize_input {resize_input} must be grid_size ({grid_size}) times a power of 2, at most 64x"
        )
    layers.append(nn.Conv2d(channels, FEATURE_DIM, 1))
    return nn.Sequential(*layers)


# backbone name -> builder(in_channels, grid_size=, resize_input=) returning (B, in, R, R) -> (B, 768, grid, grid)
BACKBONES = {"small": small_backbone, "convnext_tiny": convnext_tiny_backbone}


def learned_downsampler(map_channels: int, hidden: int, out_channels: int = 8) -> nn.Sequential:
    """GLIGEN's stride-4 downsampler: (B, C, 4h, 4w) -> (B, 8, h, w); keys ``{0,2}.*``."""
    return nn.Sequential(
        nn.Conv2d(map_channels, hidden, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(hidden, out_channels, 4, 2, 1)
    )


class SpatialMapTokenizer(GroundingTokenizer):
    """Shared implementation; each registered preset fixes the map name and its defaults.

    ``downsampler``: "learned" (two strided convs to 8 channels) or "resize" (no parameters: the map itself, resized
    to the latent, is the single extra channel — GLIGEN's HED model). ``first_conv_override`` carries a trained copy
    of conv_in's latent-channel weight (official GLIGEN spatial checkpoints).
    """

    default_beta = 0.7
    default_downsampler = "learned"

    def __init__(
        self,
        *,
        dims: GroundingDims,
        grid_size: int = 8,
        resize_input: int = 256,
        hidden_dim: int = 512,
        num_classes: int = 152,
        backbone: str = "small",
        downsampler: str | None = None,
        first_conv_override: bool = False,
    ) -> None:
        downsampler = downsampler or self.default_downsampler
        super().__init__(
            dims=dims,
            grid_size=grid_size,
            resize_input=resize_input,
            hidden_dim=hidden_dim,
            num_classes=num_classes,
            backbone=backbone,
            downsampler=downsampler,
            first_conv_override=first_conv_override,
        )
        if backbone not in BACKBONES:
            raise ValueError(f"unknown spatial backbone {backbone!r}; known: {', '.join(BACKBONES)}")
        if downsampler not in ("learned", "resize"):
            raise ValueError(f"downsampler must be 'learned' or 'resize', got {downsampler!r}")
        if self.modality == "semantic":
            # GLIGEN feeds one-hot labels through a 3x3 conv to 3 channels before the backbone
            self.in_conv = nn.Conv2d(self.map_channels, BACKBONE_CHANNELS, 3, padding=1)
        self.backbone = BACKBONES[backbone](BACKBONE_CHANNELS, grid_size=grid_size, resize_input=resize_input)
        self.pos_embedding = nn.Parameter(torch.empty(1, grid_size**2, FEATURE_DIM).normal_(0.0, 0.02))
        self.null_feature = nn.Parameter(torch.zeros(FEATURE_DIM))
        self.linears = mlp(FEATURE_DIM, dims.token_dim, hidden_dim)
        if downsampler == "learned":
            self.downsample_net = learned_downsampler(self.map_channels, 16 if self.modality == "semantic" else 4)
        extra_channels = 8 if downsampler == "learned" else 1
        self.conv_in_residual_proj = nn.Conv2d(extra_channels, dims.conv_in_channels, 3, padding=1, bias=False)
        nn.init.zeros_(self.conv_in_residual_proj.weight)
        if first_conv_override:
            self.conv_in_latent_weight = nn.Parameter(torch.zeros(dims.conv_in_channels, 4, 3, 3))

    @classmethod
    def example_layout(cls) -> dict:
        rng = np.random.default_rng(0)
        if cls.modality == "semantic":
            return {"semantic": rng.integers(0, 20, (48, 40), dtype=np.uint8)}
        channels = MAP_CHANNELS[cls.modality]
        shape = (48, 40, channels) if channels > 1 else (48, 40)
        return {cls.modality: rng.integers(0, 255, shape, dtype=np.uint8)}

    @property
    def map_channels(self) -> int:
        return self.options["num_classes"] if self.modality == "semantic" else MAP_CHANNELS[self.modality]

    @property
    def num_tokens(self) -> int:
        return self.options["grid_size"] ** 2

    def init_from_base(self, conv_in: nn.Conv2d) -> None:
        """Start the first-conv override at the base weight, so a fresh adapter is the identity."""
        if self.options["first_conv_override"]:
            if conv_in.in_channels != 4:
                raise ValueError(f"first_conv_override needs a 4-channel conv_in, this UNet has {conv_in.in_channels}")
            with torch.no_grad():
                self.conv_in_latent_weight.copy_(conv_in.weight)

    def prepare(self, layouts: Sequence[Layout], encoders: GroundingEncoders) -> dict[str, torch.Tensor]:
        inputs = self.null_inputs(len(layouts))
        for i, layout in enumerate(layouts):
            if self.modality in layout.maps:
                inputs["maps"][i] = self.normalize_map(layout.maps[self.modality])
                inputs["masks"][i] = 1.0
                inputs["conv_masks"][i] = 1.0
        return inputs

    def normalize_map(self, value: torch.Tensor) -> torch.Tensor:
        """(C, H, W) map in [0, 1] (semantic: class ids) -> (map_channels, R, R) in [-1, 1] (semantic: one-hot)."""
        size = self.options["resize_input"]
        # nearest keeps edges and label ids crisp, as GLIGEN resizes its maps
        resized = F.interpolate(value[None].float(), size=(size, size), mode="nearest")[0]
        if self.modality == "semantic":
            ids = resized[0].long()
            if int(ids.max()) >= self.map_channels:
                raise ValueError(
                    f"semantic map holds class id {int(ids.max())}; this adapter knows {self.map_channels}"
                )
            return rearrange(F.one_hot(ids, self.map_channels).float(), "h w c -> c h w")
        return resized * 2 - 1

    def null_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        size = self.options["resize_input"]
        return {
            "maps": torch.zeros(batch_size, self.map_channels, size, size),
            "masks": torch.zeros(batch_size),
            "conv_masks": torch.zeros(batch_size),
        }

    def forward(self, maps: torch.Tensor, masks: torch.Tensor, conv_masks: torch.Tensor | None = None) -> torch.Tensor:
        """maps (B, C, R, R); masks (B,), 0 = null tokens. Returns (B, grid**2, token_dim)."""
        if self.modality == "semantic":
            features = self.in_conv(maps)
        else:
            features = repeat(maps, "b 1 h w -> b c h w", c=BACKBONE_CHANNELS) if maps.shape[1] == 1 else maps
        features = rearrange(self.backbone(features), "b c h w -> b (h w) c")
        # GLIGEN swaps in the null feature before adding positions, so null tokens still differ by position
        features = blend_null(features, masks[:, None].expand(-1, features.shape[1]), self.null_feature)
        return self.linears(features + self.pos_embedding)

    def conv_in_residual(
        self, inputs: dict[str, torch.Tensor], *, latents: torch.Tensor, conv_in: nn.Conv2d
    ) -> torch.Tensor:
        """(B, conv_in_channels, h, w) for ``latents`` (B, 4, h, w); zero where ``conv_masks`` is 0."""
        height, width = latents.shape[-2:]
        maps = inputs["maps"]
        if self.options["downsampler"] == "resize":
            extra = F.interpolate(maps[:, :1], size=(height, width), mode="bicubic")
        else:
            # GLIGEN resizes with bicubic, labels with nearest; grey maps use only their first channel anyway
            mode = "nearest" if self.modality == "semantic" else "bicubic"
            extra = self.downsample_net(F.interpolate(maps, size=(4 * height, 4 * width), mode=mode))
        residual = self.conv_in_residual_proj(extra.to(self.conv_in_residual_proj.weight.dtype))
        if self.options["first_conv_override"]:
            delta = (self.conv_in_latent_weight - conv_in.weight).to(latents.dtype)
            residual = residual + F.conv2d(latents, delta, stride=conv_in.stride, padding=conv_in.padding)
        return residual * inputs["conv_masks"].to(residual.dtype)[:, None, None, None]


@register_tokenizer("depth")
class DepthTokenizer(SpatialMapTokenizer):
    """Depth maps, near = bright (MiDaS inverse depth)."""

    default_beta = 0.7


@register_tokenizer("normal")
class NormalTokenizer(SpatialMapTokenizer):
    """Surface-normal maps, 3 channels in [0, 1]."""

    default_beta = 0.7


@register_tokenizer("semantic")
class SemanticTokenizer(SpatialMapTokenizer):
    """Semantic label maps (integer class ids, one-hot inside)."""

    default_beta = 0.7


@register_tokenizer("hed")
class HedTokenizer(SpatialMapTokenizer):
    """HED soft-edge maps; like GLIGEN, the resized map itself is the one extra first-conv channel."""

    default_beta = 0.9
    default_downsampler = "resize"


@register_tokenizer("canny")
class CannyTokenizer(SpatialMapTokenizer):
    """Canny edge maps (GLIGEN used thresholds 100 and 200)."""

    default_beta = 0.9
