"""Published model shapes, built from their configs with random weights (speed and size do not depend on values)."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)


def sd15_unet(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """An SD-1.5-shaped UNet with random weights, built offline from its config."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(**SD15_UNET).to(dtype).eval()
