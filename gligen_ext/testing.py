"""Tiny, seeded, offline Stable Diffusion components built from configs (tests, the offline demo, notebooks).

Nothing here touches the network: the CLIP tokenizer is a byte-level vocabulary written to a local folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS_ID, EOS_ID = 512, 513


def _bytes_to_unicode() -> list[str]:
    """The GPT-2/CLIP byte -> printable-symbol table, in its canonical order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    symbols, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            symbols.append(256 + extra)
            extra += 1
    return [chr(s) for s in symbols]


def write_byte_tokenizer(folder: str | os.PathLike) -> Path:
    """Write a 514-entry, merge-free CLIP tokenizer (one token per byte) to ``folder`` and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _bytes_to_unicode()
    vocab = {s: i for i, s in enumerate(symbols)} | {s + "</w>": 256 + i for i, s in enumerate(symbols)}
    vocab |= {"<|startoftext|>": BOS_ID, "<|endoftext|>": EOS_ID}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    )
    return folder


def tiny_tokenizer(folder: str | os.PathLike) -> CLIPTokenizer:
    tokenizer = CLIPTokenizer.from_pretrained(write_byte_tokenizer(folder), local_files_only=True)
    tokenizer.model_max_length = 77
    return tokenizer


def tiny_text_encoder(*, hidden_size: int = 32, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        vocab_size=1000,
        layer_norm_eps=1e-5,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    return CLIPTextModel(config).eval()


def tiny_unet_config(*, cross_attention_dim: int = 32, sdxl: bool = False) -> dict:
    config = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    if sdxl:
        config |= dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,
            transformer_layers_per_block=(1, 2),
            use_linear_projection=True,
            attention_head_dim=(2, 4),
        )
    return config


def tiny_unet(
    *, seed: int = 0, cross_attention_dim: int = 32, sdxl: bool = False, **config_overrides
) -> UNet2DConditionModel:
    """A tiny UNet; ``config_overrides`` replace entries of :func:`tiny_unet_config` (e.g. ``in_channels=9``)."""
    torch.manual_seed(seed)
    config = tiny_unet_config(cross_attention_dim=cross_attention_dim, sdxl=sdxl) | config_overrides
    return UNet2DConditionModel(**config).eval()


def tiny_vae(*, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=64,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    ).eval()


def tiny_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_reference_image_encoder(*, width: int = 32, seed: int = 0):
    """A tiny CLIP vision tower, image processor and bias-free projection for image-grounded boxes."""
    from diffusers.pipelines.stable_diffusion.clip_image_project_model import CLIPImageProjection
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    try:  # transformers >= 5 names the torchvision-free processor explicitly
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor

    from .encoders import ReferenceImageEncoder

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=width,
        projection_dim=width,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=32,
        patch_size=8,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return ReferenceImageEncoder(CLIPVisionModelWithProjection(config).eval(), processor, CLIPImageProjection(width))


def tiny_sd_components(folder: str | os.PathLike, *, seed: int = 0, **unet_overrides) -> dict:
    """Everything a Stable Diffusion pipeline needs, tiny and offline (64x64 images, 32x32 latents)."""
    return dict(
        vae=tiny_vae(seed=seed),
        text_encoder=tiny_text_encoder(seed=seed),
        tokenizer=tiny_tokenizer(folder),
        unet=tiny_unet(seed=seed, **unet_overrides),
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_components(folder: str | os.PathLike, *, seed: int = 0) -> dict:
    """Everything an SDXL pipeline needs, tiny and offline: two text encoders (32 wide each) and a 64-wide UNet."""
    from transformers import CLIPTextModelWithProjection

    text_encoder = tiny_text_encoder(seed=seed)
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(
        text_encoder.config.__class__(**{**text_encoder.config.to_dict(), "projection_dim": 32})
    ).eval()
    tokenizer = tiny_tokenizer(folder)
    return dict(
        vae=tiny_vae(seed=seed),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=tiny_unet(seed=seed, sdxl=True, cross_attention_dim=64),
        scheduler=tiny_scheduler(),
        force_zeros_for_empty_prompt=True,
    )


def tiny_upscaler(folder: str | os.PathLike, *, seed: int = 0):
    """A tiny, offline x4 ``StableDiffusionUpscalePipeline`` (its VAE decodes latents at 4x their size)."""
    from diffusers import DDPMScheduler, StableDiffusionUpscalePipeline

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **{**tiny_unet_config(), "in_channels": 7, "num_class_embeds": 100, "sample_size": 32}
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    ).eval()
    return StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=tiny_text_encoder(seed=seed),
        tokenizer=tiny_tokenizer(folder),
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        scheduler=tiny_scheduler(),
        max_noise_level=100,
    )
