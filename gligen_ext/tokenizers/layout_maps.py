"""Layout maps: an opt-in direct spatial path for boxes and keypoints, beside GLIGEN's tokens.

GLIGEN's box and keypoint tokens reach the image only through gated self-attention, which must first learn where
each visual token is; on a small or shallow UNet that takes many thousand steps. A layout map paints the same
layout onto the latent grid (each box filled with its projected phrase embedding, each joint a Gaussian carrying its
joint's embedding) and a small convolution adds it to ``conv_in``'s output, as GLIGEN's spatial modalities do with
their maps. The last convolution starts at zero and nothing has a bias, so a fresh map is an identity and an empty
layout (the unconditional branch) adds exactly nothing. Off by default, so official GLIGEN weights load unchanged.
"""

from __future__ import annotations

import torch
from einops import einsum
from torch import nn


class LayoutMapResidual(nn.Module):
    """(B, map_channels, h, w) painted map -> (B, conv_in_channels, h, w) residual.

    Zero at init and for an empty map."""

    def __init__(self, map_channels: int, out_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(map_channels, hidden, 3, padding=1, bias=False),
            nn.SiLU(),
            nn.Conv2d(hidden, out_channels, 3, padding=1, bias=False),
        )
        nn.init.zeros_(self.net[2].weight)

    def forward(self, painted: torch.Tensor) -> torch.Tensor:
        return self.net(painted.to(self.net[0].weight.dtype))


def grid_centres(height: int, width: int, *, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised cell-centre coordinates of an ``height x width`` grid: ys (h, 1) and xs (1, w)."""
    ys = (torch.arange(height, device=like.device, dtype=like.dtype) + 0.5) / height
    xs = (torch.arange(width, device=like.device, dtype=like.dtype) + 0.5) / width
    return ys[:, None], xs[None, :]


def paint_boxes(
    boxes: torch.Tensor, masks: torch.Tensor, features: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Fill each real box with its feature vector.

    boxes (B, N, 4) normalised xyxy; masks (B, N), 1 = real; features (B, N, C). Returns (B, C, h, w), the sum over
    the boxes covering each cell. A box smaller than a cell still covers the cell holding its centre.
    """
    ys, xs = grid_centres(*size, like=boxes)
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))  # (B, N, 1, 1)
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    centre_x, centre_y = ((x0 + x1) / 2 * size[1]).floor(), ((y0 + y1) / 2 * size[0]).floor()
    at_centre = ((xs * size[1]).floor() == centre_x) & ((ys * size[0]).floor() == centre_y)
    cover = (inside | at_centre).to(features.dtype) * masks[..., None, None].to(features.dtype)
    return einsum(cover, features, "b n h w, b n c -> b c h w")


def paint_points(
    points: torch.Tensor, masks: torch.Tensor, features: torch.Tensor, size: tuple[int, int], *, sigma: float
) -> torch.Tensor:
    """Splat each visible point as a Gaussian (``sigma`` in cells) carrying its feature vector.

    points (B, N, 2) normalised xy; masks (B, N), 1 = visible; features (B, N, C) or (N, C). Returns (B, C, h, w).
    """
    ys, xs = grid_centres(*size, like=points)
    dx = (xs - points[..., 0, None, None]) * size[1]  # (B, N, 1, w) in cells
    dy = (ys - points[..., 1, None, None]) * size[0]  # (B, N, h, 1)
    weight = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)) * masks[..., None, None].to(points.dtype)
    features = features.expand(points.shape[0], -1, -1) if features.dim() == 2 else features
    return einsum(weight, features.to(weight.dtype), "b n h w, b n c -> b c h w")
