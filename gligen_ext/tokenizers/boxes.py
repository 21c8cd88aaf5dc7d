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
from .layout_maps import LayoutMapResidual, paint_boxes


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
    """Token per box: MLP([phrase embedding ; Fourier(xyxy)]). Padded slots use learned nulls (GLIGEN Sec. 3.2).

    ``layout_map_channels > 0`` (off in GLIGEN) also paints each box with its phrase embedding, projected to that
    many channels, and adds the map to ``conv_in``'s output (:mod:`~gligen_ext.tokenizers.layout_maps`).
    """

    default_beta = 0.3

    def __init__(
        self,
        *,
        dims: GroundingDims,
        max_objs: int = 30,
        fourier_freqs: int = 8,
        hidden_dim: int = 512,
        layout_map_channels: int = 0,
    ) -> None:
        super().__init__(dims=dims, max_objs=max_objs, fourier_freqs=fourier_freqs, hidden_dim=hidden_dim,
                         layout_map_channels=layout_map_channels)
        self.fourier_freqs = fourier_freqs
        position_dim = fourier_freqs * 2 * 4
        self.linears = mlp(dims.positive_len + position_dim, dims.token_dim, hidden_dim)
        self.null_positive_feature = nn.Parameter(torch.zeros(dims.positive_len))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))
        if layout_map_channels:
            self.layout_map_phrases = nn.Linear(dims.positive_len, layout_map_channels, bias=False)
            self.layout_map = LayoutMapResidual(layout_map_channels, dims.conv_in_channels)

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

    def conv_in_residual(
        self, inputs: dict[str, torch.Tensor], *, latents: torch.Tensor, conv_in: nn.Conv2d
    ) -> torch.Tensor | None:
        """(B, conv_in_channels, h, w) from the painted boxes, or None without a layout map."""
        if not self.options.get("layout_map_channels"):
            return None
        phrases = self.layout_map_phrases(inputs["positive_embeddings"].to(self.layout_map_phrases.weight.dtype))
        return self.layout_map(paint_boxes(inputs["boxes"], inputs["masks"], phrases, tuple(latents.shape[-2:])))
