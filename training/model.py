"""The frozen Stable Diffusion parts, the adapter injected into them, and how captions become UNet conditioning."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

from gligen_ext import (
    PhraseEncoder,
    adapter_lora_parameters,
    adapter_parameters,
    add_adapter_lora,
    add_grounding_adapter,
)
from gligen_ext.inject import AdapterTokenizers

from .config import AdapterConfig, ModelConfig

logger = logging.getLogger(__name__)


class TrainableParameterError(RuntimeError):
    """Something other than the adapter would be trained: a base parameter was left unfrozen."""


@dataclass
class FrozenParts:
    """Everything of the base model the training loop touches; only the adapter inside ``unet`` learns."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: Any
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: Any = None

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    def phrase_encoder(self) -> PhraseEncoder:
        """Box phrases are embedded as the pipelines embed them: SDXL uses its second encoder's pooled output."""
        if self.is_sdxl:
            return PhraseEncoder(self.tokenizer_2, self.text_encoder_2)
        return PhraseEncoder(self.tokenizer, self.text_encoder)


def load_frozen_parts(config: ModelConfig) -> FrozenParts:
    """Load vae, text encoder(s), tokenizer(s), UNet and the DDPM noise schedule from a diffusers folder or hub id.

    SDXL is recognised by its UNet (``addition_embed_type == "text_time"``), which then needs the second encoder.
    """
    source = {"revision": config.revision}
    weights = {**source, "variant": config.variant}
    unet = UNet2DConditionModel.from_pretrained(config.pretrained, subfolder="unet", **weights)
    vae_source = config.vae or config.pretrained
    vae = AutoencoderKL.from_pretrained(vae_source, subfolder=None if config.vae else "vae", **weights)
    parts = FrozenParts(
        vae=vae,
        text_encoder=CLIPTextModel.from_pretrained(config.pretrained, subfolder="text_encoder", **weights),
        tokenizer=AutoTokenizer.from_pretrained(config.pretrained, subfolder="tokenizer", **source),
        unet=unet,
        noise_scheduler=DDPMScheduler.from_pretrained(config.pretrained, subfolder="scheduler", **source),
    )
    if unet.config.get("addition_embed_type") == "text_time":
        parts.text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            config.pretrained, subfolder="text_encoder_2", **weights
        )
        parts.tokenizer_2 = AutoTokenizer.from_pretrained(config.pretrained, subfolder="tokenizer_2", **source)
    for module in (parts.vae, parts.text_encoder, parts.text_encoder_2, parts.unet):
        if module is not None:
            module.requires_grad_(False)
    for module in (parts.vae, parts.text_encoder, parts.text_encoder_2):
        if module is not None:
            module.eval()
    return parts


def inject_adapter(parts: FrozenParts, config: AdapterConfig) -> AdapterTokenizers:
    """Add an identity-initialised grounding adapter to the UNet (or start from ``init_from``'s weights)."""
    adapter = add_grounding_adapter(
        parts.unet,
        config.modalities,
        adapter_name=config.name,
        positive_len=parts.phrase_encoder().width,
        tokenizer_options=config.tokenizer_options,
        visual_position_freqs=config.visual_position_freqs,
        ff_mult=config.ff_mult,
    )
    if config.init_from:
        from .checkpoints import copy_adapter_weights

        copy_adapter_weights(parts.unet, config.init_from, adapter_name=config.name)
        logger.info("adapter initialised from %s", config.init_from)
    if config.lora_rank:
        add_adapter_lora(parts.unet, config.name, rank=config.lora_rank, alpha=config.lora_alpha)
        logger.info("LoRA rank %d on the gated layers of %s; the adapter itself stays frozen", config.lora_rank,
                    config.init_from)
    return adapter


def trainable_parameters(unet: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """The parameters the optimiser updates, by file key: the grounding adapter's, nothing of the base model.

    This is the one place that decides what learns. LoRA fine-tuning (``--lora-rank``) adds its factors here, after
    they are applied to the UNet. ``add_grounding_adapter`` froze the base; a base parameter that is trainable anyway
    (e.g. unfrozen by other code) is an error rather than a silent full fine-tune.
    """
    lora_ids = {id(p) for p in adapter_lora_parameters(unet, adapter_name)}
    if lora_ids:  # a LoRA fine-tune: only the low-rank factors learn
        params = {name: p for name, p in unet.named_parameters() if id(p) in lora_ids}
    else:
        params = adapter_parameters(unet, adapter_name)
    adapter_ids = {id(p) for p in params.values()}
    stray = [name for name, p in unet.named_parameters() if p.requires_grad and id(p) not in adapter_ids]
    if stray:
        raise TrainableParameterError(
            f"{len(stray)} base UNet parameters are trainable (first: {stray[0]}); only the adapter may learn — "
            "freeze them with requires_grad_(False)"
        )
    for param in params.values():
        param.requires_grad_(True)
    return params


def encode_captions(
    parts: FrozenParts, captions: list[str], *, resolution: int, device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Captions -> (encoder_hidden_states (B, 77, D), SDXL ``added_cond_kwargs`` or None).

    SD: the text encoder's last hidden state. SDXL, as its pipeline does: both encoders' penultimate hidden states
    concatenated, plus the second encoder's pooled ``text_embeds`` and the size/crop ``time_ids`` (no crop recorded:
    original = target = the training resolution).
    """
    with torch.no_grad():
        if not parts.is_sdxl:
            return parts.text_encoder(_token_ids(parts.tokenizer, captions, device))[0], None
        states = []
        for tokenizer, encoder in ((parts.tokenizer, parts.text_encoder), (parts.tokenizer_2, parts.text_encoder_2)):
            output = encoder(_token_ids(tokenizer, captions, device), output_hidden_states=True)
            states.append(output.hidden_states[-2])
        pooled = output.text_embeds
        size = [resolution, resolution, 0, 0, resolution, resolution]
        time_ids = torch.tensor([size] * len(captions), device=device, dtype=pooled.dtype)
        return torch.cat(states, dim=-1), {"text_embeds": pooled, "time_ids": time_ids}


def _token_ids(tokenizer: Any, captions: list[str], device: torch.device) -> torch.Tensor:
    tokens = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return tokens.input_ids.to(device)


def sampling_pipeline(parts: FrozenParts, unet: nn.Module) -> Any:
    """A grounded pipeline sharing the training components (no copies), with a DDIM sampler for quick previews."""
    from diffusers import DDIMScheduler

    from gligen_ext.pipelines import GroundedStableDiffusionPipeline, GroundedStableDiffusionXLPipeline

    scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config)
    if parts.is_sdxl:
        pipe = GroundedStableDiffusionXLPipeline(
            vae=parts.vae,
            text_encoder=parts.text_encoder,
            text_encoder_2=parts.text_encoder_2,
            tokenizer=parts.tokenizer,
            tokenizer_2=parts.tokenizer_2,
            unet=unet,
            scheduler=scheduler,
        )
    else:
        pipe = GroundedStableDiffusionPipeline(
            vae=parts.vae,
            text_encoder=parts.text_encoder,
            tokenizer=parts.tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
