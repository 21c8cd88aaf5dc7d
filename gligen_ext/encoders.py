"""Frozen encoders that turn phrases and reference images into the embeddings grounding tokenizers consume."""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

# GLIGEN rescales projected CLIP image embeddings to the typical norm of CLIP-L text pooled outputs
IMAGE_EMBEDDING_NORM = 28.7


class PhraseEncoder:
    """``encode(list[str]) -> (n, width)``: the text encoder's pooled output for each phrase on its own.

    For ``CLIPTextModel`` that is ``pooler_output`` (the end-token state after the final LayerNorm, before any
    projection, as GLIGEN uses). For ``CLIPTextModelWithProjection`` (SDXL's second encoder) it is ``text_embeds``.
    CLIP pools at the first ``eos_token_id``: the tokenizer's end token must not occur inside phrases.
    """

    def __init__(self, tokenizer, text_encoder: nn.Module, *, batch_size: int = 64) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.batch_size = batch_size

    @property
    def width(self) -> int:
        config = self.text_encoder.config
        return getattr(config, "projection_dim", None) if self.uses_projection else config.hidden_size

    @property
    def uses_projection(self) -> bool:
        return hasattr(self.text_encoder, "text_projection")

    @torch.no_grad()
    def __call__(self, phrases: list[str]) -> torch.Tensor:
        device = next(self.text_encoder.parameters()).device
        chunks = []
        for start in range(0, len(phrases), self.batch_size):
            tokens = self.tokenizer(
                phrases[start : start + self.batch_size],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            output = self.text_encoder(tokens.input_ids.to(device))
            chunks.append(output.text_embeds if self.uses_projection else output.pooler_output)
        return torch.cat(chunks).float()


class ReferenceImageEncoder:
    """``encode(list[PIL.Image]) -> (n, width)``: CLIP image embeddings mapped into the phrase-embedding space.

    GLIGEN: L2-normalised ``image_embeds`` times the CLIP text projection ``P`` (``image_projection``, a bias-free
    Linear, diffusers' ``CLIPImageProjection``), rescaled to norm 28.7. Without ``image_projection`` the embedding is
    used as is (its width must then equal the phrase width).
    """

    def __init__(self, image_encoder: nn.Module, image_processor, image_projection: nn.Module | None = None) -> None:
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.image_projection = image_projection

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        parameter = next(self.image_encoder.parameters())
        pixels = self.image_processor(images=images, return_tensors="pt").pixel_values
        embeddings = self.image_encoder(pixels.to(parameter.device, parameter.dtype)).image_embeds
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        if self.image_projection is not None:
            embeddings = self.image_projection(embeddings)
        return (embeddings / embeddings.norm(dim=-1, keepdim=True) * IMAGE_EMBEDDING_NORM).float()
