"""Boxes with text phrases: GLIGEN's text grounding net, diffusers' ``GLIGENTextBoundingboxProjection`` (text-only)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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


def encode_unique_phrases(phrases: list[str], encoders: GroundingEncoders, modality: str) -> dict[str, torch.Tensor]:
    """Pooled text embedding for each distinct phrase, computed once."""
    unique = sorted(set(phrases))
    if not unique:
        return {}
    if encoders.encode_phrases is None:
        raise ValueError(
            f"the {modality!r} tokenizer needs a phrase encoder (text encoder + tokenizer) to embed phrases"
        )
    embeddings = encoders.encode_phrases(unique).detach().float().cpu()
    return dict(zip(unique, embeddings))


@register_tokenizer("boxes")
class BoxTokenizer(GroundingTokenizer):
    """Token per box: MLP([phrase embedding ; Fourier(xyxy)]). Padded slots use learned nulls (GLIGEN Sec. 3.2)."""

    default_beta = 0.3

    def __init__(
        self, *, dims: GroundingDims, max_objs: int = 30, fourier_freqs: int = 8, hidden_dim: int = 512
    ) -> None:
        super().__init__(dims=dims, max_objs=max_objs, fourier_freqs=fourier_freqs, hidden_dim=hidden_dim)
        self.fourier_freqs = fourier_freqs
        position_dim = fourier_freqs * 2 * 4
        self.linears = mlp(dims.positive_len + position_dim, dims.token_dim, hidden_dim)
        self.null_positive_feature = nn.Parameter(torch.zeros(dims.positive_len))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))

    @classmethod
    def example_layout(cls) -> dict:
        return {
            "boxes": [
                {"phrase": "a red circle", "box": [0.1, 0.2, 0.5, 0.6]},
                {"phrase": "a blue square", "box": [0.5, 0.5, 0.9, 0.95]},
            ]
        }

    @property
    def num_tokens(self) -> int:
        return self.options["max_objs"]

    def prepare(self, layouts: Sequence[Layout], encoders: GroundingEncoders) -> dict[str, torch.Tensor]:
        inputs = self.null_inputs(len(layouts))
        kept = [keep_largest_boxes(layout.phrase_boxes, self.num_tokens) for layout in layouts]
        table = encode_unique_phrases([b.phrase for boxes in kept for b in boxes], encoders, self.modality)
        for i, boxes in enumerate(kept):
            for j, box in enumerate(boxes):
                inputs["boxes"][i, j] = torch.tensor(box.box)
                inputs["masks"][i, j] = 1.0
                inputs["positive_embeddings"][i, j] = table[box.phrase]
        return inputs

    def null_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        n = self.num_tokens
        return {
            "boxes": torch.zeros(batch_size, n, 4),
            "masks": torch.zeros(batch_size, n),
            "positive_embeddings": torch.zeros(batch_size, n, self.dims.positive_len),
        }

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, positive_embeddings: torch.Tensor) -> torch.Tensor:
        """boxes (B, N, 4) normalised xyxy; masks (B, N), 1 = real box; positive_embeddings (B, N, positive_len).
        Returns (B, N, token_dim)."""
        position = fourier_embed(boxes, num_freqs=self.fourier_freqs)
        position = blend_null(position, masks, self.null_position_feature)
        phrases = blend_null(positive_embeddings, masks, self.null_positive_feature)
        return self.linears(torch.cat([phrases, position], dim=-1))
