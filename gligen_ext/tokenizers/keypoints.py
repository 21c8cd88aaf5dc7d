"""Human keypoints in COCO-17 order (GLIGEN's keypoint grounding net)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from einops import rearrange, repeat
from torch import nn

from ..layout import Layout, keep_largest_persons
from .base import (
    GroundingDims,
    GroundingEncoders,
    GroundingTokenizer,
    blend_null,
    fourier_embed,
    mlp,
    register_tokenizer,
)
from .layout_maps import LayoutMapResidual, paint_points

NUM_JOINTS = 17


@register_tokenizer("keypoints")
class KeypointTokenizer(GroundingTokenizer):
    """Token per (person, joint): MLP([person identity + joint identity ; Fourier(xy)]).

    Identity embeddings start at zero as in GLIGEN; masked joints take the learned null features.
    ``layout_map_channels > 0`` (off in GLIGEN) also splats each visible joint as a Gaussian carrying a learned
    per-joint embedding and adds the map to ``conv_in``'s output (:mod:`~gligen_ext.tokenizers.layout_maps`).
    """

    default_beta = 0.3

    def __init__(
        self,
        *,
        dims: GroundingDims,
        max_persons: int = 8,
        fourier_freqs: int = 8,
        hidden_dim: int = 512,
        use_occluded: bool = False,
        layout_map_channels: int = 0,
    ) -> None:
        super().__init__(
            dims=dims,
            max_persons=max_persons,
            fourier_freqs=fourier_freqs,
            hidden_dim=hidden_dim,
            use_occluded=use_occluded,
            layout_map_channels=layout_map_channels,
        )
        self.fourier_freqs = fourier_freqs
        identity_dim = dims.token_dim
        position_dim = fourier_freqs * 2 * 2
        self.person_embeddings = nn.Parameter(torch.zeros(max_persons, identity_dim))
        self.keypoint_embeddings = nn.Parameter(torch.zeros(NUM_JOINTS, identity_dim))
        self.null_person_feature = nn.Parameter(torch.zeros(identity_dim))
        self.null_xy_feature = nn.Parameter(torch.zeros(position_dim))
        self.linears = mlp(identity_dim + position_dim, dims.token_dim, hidden_dim)
        if layout_map_channels:
            # random, not zero: the map's last convolution starts at zero, and both at zero would never move
            self.layout_map_joints = nn.Parameter(torch.randn(NUM_JOINTS, layout_map_channels))
            self.layout_map = LayoutMapResidual(layout_map_channels, dims.conv_in_channels)

    @classmethod
    def example_layout(cls) -> dict:
        rng = np.random.default_rng(0)
        points = [
            [float(x), float(y), int(v)]
            for (x, y), v in zip(rng.uniform(0.2, 0.8, (NUM_JOINTS, 2)), rng.choice([0, 1, 2, 2], NUM_JOINTS))
        ]
        return {"keypoints": [{"points": points}]}

    @property
    def num_tokens(self) -> int:
        return self.options["max_persons"] * NUM_JOINTS

    def prepare(self, layouts: Sequence[Layout], encoders: GroundingEncoders) -> dict[str, torch.Tensor]:
        inputs = self.null_inputs(len(layouts))
        # GLIGEN trains on visible joints only (v == 2); occluded ones count as missing unless asked otherwise
        min_visibility = 1 if self.options["use_occluded"] else 2
        for i, layout in enumerate(layouts):
            for p, person in enumerate(keep_largest_persons(layout.keypoints, self.options["max_persons"])):
                points = torch.tensor(person.points, dtype=torch.float32)
                rows = slice(p * NUM_JOINTS, (p + 1) * NUM_JOINTS)
                inputs["points"][i, rows] = points[:, :2]
                inputs["masks"][i, rows] = (points[:, 2] >= min_visibility).float()
        return inputs

    def null_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        return {
            "points": torch.zeros(batch_size, self.num_tokens, 2),
            "masks": torch.zeros(batch_size, self.num_tokens),
        }

    def forward(self, points: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """points (B, persons*17, 2) normalised xy; masks (B, persons*17), 1 = use this joint.
        Returns (B, persons*17, token_dim)."""
        identity = rearrange(self.person_embeddings, "p d -> p 1 d") + rearrange(
            self.keypoint_embeddings, "k d -> 1 k d"
        )
        identity = repeat(identity, "p k d -> b (p k) d", b=points.shape[0])
        identity = blend_null(identity, masks, self.null_person_feature)
        position = blend_null(fourier_embed(points, num_freqs=self.fourier_freqs), masks, self.null_xy_feature)
        return self.linears(torch.cat([identity, position], dim=-1))

    def conv_in_residual(
        self, inputs: dict[str, torch.Tensor], *, latents: torch.Tensor, conv_in: nn.Conv2d
    ) -> torch.Tensor | None:
        """(B, conv_in_channels, h, w) from the splatted joints, or None without a layout map."""
        if not self.options.get("layout_map_channels"):
            return None
        joints = repeat(self.layout_map_joints, "k c -> (p k) c", p=self.options["max_persons"])
        # one latent cell: a joint's blob stays narrower than the limbs between joints
        painted = paint_points(inputs["points"], inputs["masks"], joints, tuple(latents.shape[-2:]), sigma=1.0)
        return self.layout_map(painted)
