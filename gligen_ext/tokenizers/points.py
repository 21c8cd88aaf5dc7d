"""Phrase-labelled points: "a cat" *here*, a click where GLIGEN asks for a box.

The worked example of a modality in one file (``training/NEW_MODALITY.md``): the tokenizer, its own layout field,
how that field moves under crop and flip, and how it is drawn. Nothing else in the package names it.

    {"points": [{"point": [0.3, 0.6], "phrase": "a cat"}, {"point": [0.7, 0.35], "phrase": "a red kite"}]}

Tokens follow GLIGEN's box tokenizer (Sec. 3.2) with a 2-D position instead of a box:
``MLP([phrase embedding ; Fourier(x, y)])``, learned null features for empty slots, at most 30 points.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..layout import Layout
from ..layout_fields import FieldContext, LayoutError, as_list, check_keys
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

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledPoint:
    """A ``point`` (x, y), normalised to [0, 1], grounded by a text ``phrase``."""

    point: tuple[float, float]
    phrase: str


@register_tokenizer("points")
class PointTokenizer(GroundingTokenizer):
    """Token per point: MLP([phrase embedding ; Fourier(x, y)]). Empty slots take learned nulls."""

    # a point fixes where a thing is, not its shape: ground the early steps only, like boxes (GLIGEN Sec. 4.1)
    default_beta = 0.3
    layout_key = "points"

    def __init__(
        self, *, dims: GroundingDims, max_points: int = 30, fourier_freqs: int = 8, hidden_dim: int = 512
    ) -> None:
        super().__init__(dims=dims, max_points=max_points, fourier_freqs=fourier_freqs, hidden_dim=hidden_dim)
        self.fourier_freqs = fourier_freqs
        position_dim = fourier_freqs * 2 * 2
        self.linears = mlp(dims.positive_len + position_dim, dims.token_dim, hidden_dim)
        self.null_positive_feature = nn.Parameter(torch.zeros(dims.positive_len))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))

    @classmethod
    def example_layout(cls) -> dict:
        return {"points": [{"point": [0.3, 0.6], "phrase": "a cat"}, {"point": [0.7, 0.35], "phrase": "a red kite"}]}

    @classmethod
    def parse_layout_field(cls, value: Any, context: FieldContext) -> tuple[LabelledPoint, ...]:
        """``[{"point": [x, y], "phrase": str}, ...]`` (x, y in the layout's units) -> normalised points."""
        entries = as_list(value, context.path, 'points {"point": [x, y], "phrase": ...} (wrap a single one in [])')
        return tuple(_parse_point(entry, f"{context.path}[{i}]", context) for i, entry in enumerate(entries))

    @classmethod
    def transform_layout_field(
        cls, value: Any, *, crop: tuple[float, float, float, float], flip: bool
    ) -> list[dict[str, Any]]:
        """Points inside the ``crop`` window, in its coordinates, mirrored left-right if ``flip``. Phrases stay as
        they are: a flip does not rewrite "left" into "right"."""
        x0, y0, x1, y1 = crop
        moved = []
        for item in cls.parse_layout_field(value, FieldContext(cls.layout_key)):
            x, y = (item.point[0] - x0) / (x1 - x0), (item.point[1] - y0) / (y1 - y0)
            if 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0:
                moved.append({"point": [1.0 - x if flip else x, y], "phrase": item.phrase})
        return moved

    @classmethod
    def draw_layout_field(cls, image: Image.Image, value: tuple[LabelledPoint, ...]) -> Image.Image:
        from ..viz import draw_points

        return draw_points(image, [(item.point, item.phrase) for item in value])

    @property
    def num_tokens(self) -> int:
        return self.options["max_points"]

    def prepare(self, layouts: Sequence[Layout], encoders: GroundingEncoders) -> dict[str, torch.Tensor]:
        inputs = self.null_inputs(len(layouts))
        kept = [self._keep_first(layout.extras.get(self.layout_key, ())) for layout in layouts]
        table = encode_unique_phrases([item.phrase for points in kept for item in points], encoders, self.modality)
        for i, points in enumerate(kept):
            for j, item in enumerate(points):
                inputs["points"][i, j] = torch.tensor(item.point)
                inputs["masks"][i, j] = 1.0
                inputs["positive_embeddings"][i, j] = table[item.phrase]
        return inputs

    def _keep_first(self, points: Sequence[LabelledPoint]) -> Sequence[LabelledPoint]:
        # points have no area to rank them by, so their order is their priority
        limit = self.num_tokens
        if len(points) > limit:
            logger.warning("Dropped %d of %d points: the model takes at most %d; kept the first.",
                           len(points) - limit, len(points), limit)
        return points[:limit]

    def null_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        n = self.num_tokens
        return {
            "points": torch.zeros(batch_size, n, 2),
            "masks": torch.zeros(batch_size, n),
            "positive_embeddings": torch.zeros(batch_size, n, self.dims.positive_len),
        }

    def forward(self, points: torch.Tensor, masks: torch.Tensor, positive_embeddings: torch.Tensor) -> torch.Tensor:
        """points (B, N, 2) normalised xy; masks (B, N), 1 = a real point; positive_embeddings (B, N, positive_len).
        Returns (B, N, token_dim)."""
        position = blend_null(fourier_embed(points, num_freqs=self.fourier_freqs), masks, self.null_position_feature)
        phrases = blend_null(positive_embeddings, masks, self.null_positive_feature)
        return self.linears(torch.cat([phrases, position], dim=-1))


def _parse_point(entry: Any, path: str, context: FieldContext) -> LabelledPoint:
    if isinstance(entry, LabelledPoint):  # already parsed, hence normalised
        return entry
    if not isinstance(entry, Mapping):
        raise LayoutError(f'{path}: expected a dict {{"point": [x, y], "phrase": str}}, got {type(entry).__name__}')
    check_keys(entry, ("point", "phrase"), path)
    if entry.get("point") is None:
        raise LayoutError(f'{path}: missing "point"; add "point": [x, y]')
    phrase = entry.get("phrase")
    if not isinstance(phrase, str) or not phrase.strip():
        raise LayoutError(f"{path}.phrase: expected a non-empty string naming what is at the point, got {phrase!r}")
    return LabelledPoint(context.point(entry["point"], f"{path}.point"), phrase.strip())
