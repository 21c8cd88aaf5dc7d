"""Boxes grounded by phrases and/or reference images (GLIGEN's text-image grounding net; diffusers' "text-image").

Each box gets two tokens, one from its phrase and one from its image, so N boxes give 2N tokens; a missing phrase or
image falls back to its learned null feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..layout import Layout, keep_largest_boxes
from .base import (
    GroundingDims,
    GroundingEncoders,
    GroundingTokenizer,
    blend_null,
    fourier_embed,
    mlp,
    register_tokenizer,
)
from .boxes import encode_unique_phrases


@register_tokenizer("image_boxes")
class ImageBoxTokenizer(GroundingTokenizer):
    """Tokens ``[MLP_text([phrase ; Fourier(box)]) ; MLP_image([image ; Fourier(box)])]``."""

    # GLIGEN samples image-grounded layouts with grounding on for every step
    default_beta = 1.0

    def __init__(
        self, *, dims: GroundingDims, max_objs: int = 30, fourier_freqs: int = 8, hidden_dim: int = 512
    ) -> None:
        super().__init__(dims=dims, max_objs=max_objs, fourier_freqs=fourier_freqs, hidden_dim=hidden_dim)
        self.fourier_freqs = fourier_freqs
        position_dim = fourier_freqs * 2 * 4
        self.linears_text = mlp(dims.positive_len + position_dim, dims.token_dim, hidden_dim)
        self.linears_image = mlp(dims.positive_len + position_dim, dims.token_dim, hidden_dim)
        self.null_text_feature = nn.Parameter(torch.zeros(dims.positive_len))
        self.null_image_feature = nn.Parameter(torch.zeros(dims.positive_len))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))

    @classmethod
    def example_layout(cls) -> dict:
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
        return {
            "boxes": [{"phrase": "a cat", "box": [0.1, 0.1, 0.4, 0.5]}, {"image": image, "box": [0.5, 0.2, 0.9, 0.8]}]
        }

    @property
    def num_tokens(self) -> int:
        return 2 * self.options["max_objs"]

    def handles(self, layout: Layout) -> bool:
        return bool(layout.boxes)

    def prepare(self, layouts: Sequence[Layout], encoders: GroundingEncoders) -> dict[str, torch.Tensor]:
        inputs = self.null_inputs(len(layouts))
        kept = [keep_largest_boxes(layout.boxes, self.options["max_objs"]) for layout in layouts]
        table = encode_unique_phrases([b.phrase for boxes in kept for b in boxes if b.phrase], encoders, self.modality)
        images = [b.image for boxes in kept for b in boxes if b.image is not None]
        if images and encoders.encode_images is None:
            raise ValueError("the 'image_boxes' tokenizer needs an image encoder to embed reference images")
        image_embeddings = iter(encoders.encode_images(images).detach().float().cpu()) if images else iter(())
        for i, boxes in enumerate(kept):
            for j, box in enumerate(boxes):
                inputs["boxes"][i, j] = torch.tensor(box.box)
                inputs["masks"][i, j] = 1.0
                if box.phrase:
                    inputs["phrases_masks"][i, j] = 1.0
                    inputs["phrases_embeddings"][i, j] = table[box.phrase]
                else:
                    inputs["image_masks"][i, j] = 1.0
                    inputs["image_embeddings"][i, j] = next(image_embeddings)
        return inputs

    def null_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        n, width = self.options["max_objs"], self.dims.positive_len
        return {
            "boxes": torch.zeros(batch_size, n, 4),
            "masks": torch.zeros(batch_size, n),
            "phrases_masks": torch.zeros(batch_size, n),
            "image_masks": torch.zeros(batch_size, n),
            "phrases_embeddings": torch.zeros(batch_size, n, width),
            "image_embeddings": torch.zeros(batch_size, n, width),
        }

    def forward(
        self,
        boxes: torch.Tensor,
        masks: torch.Tensor,
        phrases_masks: torch.Tensor,
        image_masks: torch.Tensor,
        phrases_embeddings: torch.Tensor,
        image_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """boxes (B, N, 4); masks, phrases_masks, image_masks (B, N); embeddings (B, N, positive_len).
        Returns (B, 2N, token_dim): N phrase tokens then N image tokens."""
        position = blend_null(fourier_embed(boxes, num_freqs=self.fourier_freqs), masks, self.null_position_feature)
        phrases = blend_null(phrases_embeddings, phrases_masks, self.null_text_feature)
        images = blend_null(image_embeddings, image_masks, self.null_image_feature)
        text_tokens = self.linears_text(torch.cat([phrases, position], dim=-1))
        image_tokens = self.linears_image(torch.cat([images, position], dim=-1))
        return torch.cat([text_tokens, image_tokens], dim=1)
