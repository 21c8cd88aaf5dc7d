"""GLIGEN's gated self-attention layer ("fuser") and the per-block container that stacks adapters.

Paper: GLIGEN, Li et al. 2023 (arXiv 2301.07093), Eq. 8. Parameter names match the official code and diffusers'
``GatedSelfAttentionDense`` so that existing GLIGEN weights load without renaming.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from .attention import attend_with_extra_keys
from .tokenizers import fourier_embed
from .tokenizers.layout_maps import grid_centres


class GatedSelfAttention(nn.Module):
    """Gated self-attention over ``[visual tokens ; projected grounding tokens]``.

    ``v <- v + s * tanh(alpha_attn) * SelfAttn(LN([v ; W g]))[:, :N_v]`` then
    ``v <- v + s * tanh(alpha_dense) * FF(LN(v))``, where ``s = weight * beta`` is set by the injection code.
    Both alphas start at 0, so a fresh layer is an exact identity.

    ``position_freqs > 0`` (off in GLIGEN) adds ``P fourier(x, y)`` of each visual token's place on the latent grid to
    its normalised features before the attention, so that a token can tell whether it lies inside a grounding box
    even when the base UNet's features carry little absolute position (small or shallow UNets; SD's do not need it).

    ``ff_mult`` is the feed-forward's width over ``query_dim`` (GLIGEN: 4, as in SD's transformer blocks). The
    feed-forward holds three quarters of the layer's weights at 4; a smaller one makes a smaller adapter file.
    """

    def __init__(
        self, *, query_dim: int, context_dim: int, heads: int, dim_head: int, position_freqs: int = 0,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.position_freqs = position_freqs
        self.ff_mult = ff_mult
        self.visual_position = nn.Linear(position_freqs * 2 * 2, query_dim) if position_freqs else None
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = Attention(query_dim=query_dim, heads=heads, dim_head=dim_head)
        self.ff = FeedForward(query_dim, mult=ff_mult, activation_fn="geglu")
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))
        # adapter weight x scheduled-sampling beta; a float, not an on/off flag (GLIGEN Sec. 3.3)
        self.scale = 1.0
        self._kv_cache: tuple | None = None  # (key, tokens, keys, values) of the last grounding tokens seen

    def forward(
        self, hidden_states: torch.Tensor, tokens: torch.Tensor, *, latent_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """hidden_states: (B, N_v, C) visual tokens; tokens: (B, N_g, context_dim). Returns (B, N_v, C).

        ``latent_size`` is the UNet input's (H, W), which places the visual tokens of any level on their grid; it is
        only read with ``position_freqs`` (without it the grid is taken to be square).
        """
        if self.scale == 0.0:
            return hidden_states
        visual = self.norm1(hidden_states)
        if self.visual_position is not None:
            visual = visual + self.visual_position(self._grid_features(hidden_states, latent_size))
        key, value = self.grounding_keys_values(tokens.to(hidden_states.dtype))
        attended = attend_with_extra_keys(self.attn, visual, key, value)
        if attended is None:  # a processor the split path does not know: Eq. 8 as written
            grounding = self.norm1(self.linear(tokens.to(hidden_states.dtype)))
            attended = self.attn(torch.cat([visual, grounding], dim=1))[:, : visual.shape[1]]
        hidden_states = hidden_states + self.scale * self.alpha_attn.tanh() * attended
        hidden_states = hidden_states + self.scale * self.alpha_dense.tanh() * self.ff(self.norm2(hidden_states))
        return hidden_states

    def _grid_features(self, hidden_states: torch.Tensor, latent_size: tuple[int, int] | None) -> torch.Tensor:
        """Fourier features of each visual token's cell centre, (N_v, 4 * position_freqs), x and y in [0, 1]."""
        ys, xs = grid_centres(*visual_grid(hidden_states.shape[1], latent_size), like=hidden_states)
        # row-major, as diffusers' Transformer2DModel flattens (B, C, H, W) into (B, H * W, C)
        centres = torch.stack(torch.broadcast_tensors(xs, ys), dim=-1).reshape(-1, 2)
        return fourier_embed(centres, num_freqs=self.position_freqs)

    def grounding_keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, N_g, context_dim) -> the attention's keys and values of the grounding rows, (B, N_g, inner).

        LayerNorm works row by row, so these rows do not depend on the visual tokens: a sampler that passes the
        same tokens at every step (the position net caches them) gets them computed once per generation. With
        gradients on (training) they are always recomputed.
        """
        if torch.is_grad_enabled():
            return self._project_grounding(tokens)
        # parameter versions change on any in-place update, so edited weights never hit a stale entry
        version = 0 if tokens.is_inference() else tokens._version  # inference tensors keep no counter
        key = (id(tokens), version, tuple(p._version for p in self.parameters()))
        if self._kv_cache is None or self._kv_cache[0] != key:
            self._kv_cache = (key, tokens, *self._project_grounding(tokens))  # holding tokens keeps its id unique
        return self._kv_cache[2], self._kv_cache[3]

    def _project_grounding(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grounding = self.norm1(self.linear(tokens))
        return self.attn.to_k(grounding), self.attn.to_v(grounding)


def visual_grid(num_tokens: int, latent_size: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) of a UNet level holding ``num_tokens`` visual tokens, for an input latent of ``latent_size`` (H, W).

    Each downsampling halves a side, rounding up (stride-2 convolution with padding 1).
    """
    if latent_size is None:
        side = round(num_tokens**0.5)
        if side * side != num_tokens:
            raise ValueError(f"{num_tokens} visual tokens are not a square grid; pass latent_size")
        return side, side
    height, width = int(latent_size[0]), int(latent_size[1])
    while height * width > num_tokens:
        height, width = -(-height // 2), -(-width // 2)
    if height * width != num_tokens:
        raise ValueError(f"{num_tokens} visual tokens match no level of a {latent_size[0]}x{latent_size[1]} latent")
    return height, width


class GroundingFuser(nn.Module):
    """What a transformer block calls as ``self.fuser``: one :class:`GatedSelfAttention` per loaded adapter.

    ``tokens_by_adapter`` maps adapter names to their grounding tokens. An adapter with no tokens in this call (its
    modalities are absent from the layout) is skipped, so it costs nothing and changes nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()

    def forward(self, hidden_states: torch.Tensor, tokens_by_adapter: dict[str, torch.Tensor]) -> torch.Tensor:
        latent_size = getattr(tokens_by_adapter, "latent_size", None)  # set by the position net (GroundingTokens)
        for name, layer in self.layers.items():
            tokens = tokens_by_adapter.get(name)
            if tokens is not None:
                hidden_states = layer(hidden_states, tokens, latent_size=latent_size)
        return hidden_states
