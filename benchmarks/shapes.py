"""Published model shapes, built from their configs with random weights (speed and size do not depend on values)."""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from gligen_ext.testing import BOS_ID, EOS_ID, tiny_tokenizer

# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
# the same model's vae/config.json and text_encoder/config.json (CLIP ViT-L/14 text)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215)
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
                   bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
# the same model's scheduler/scheduler_config.json, as DDIM
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def sd15_unet(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """An SD-1.5-shaped UNet with random weights, built offline from its config."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(**SD15_UNET).to(dtype).eval()


def sd15_components(folder: str | os.PathLike, *, seed: int = 0) -> dict:
    """Every component of an SD-1.5 pipeline, SD-1.5-shaped with random weights; the tokenizer is the offline
    byte-level one (token ids, not the vocabulary, decide the text encoder's cost)."""
    torch.manual_seed(seed)
    return dict(
        vae=AutoencoderKL(**SD15_VAE).eval(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)).eval(),
        tokenizer=tiny_tokenizer(folder),
        unet=sd15_unet(seed=seed),
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
