"""GLIGEN's gated self-attention layer ("fuser") and the per-block container that stacks adapters.

Paper: GLIGEN, Li et al. 2023 (arXiv 2301.07093), Eq. 8. Parameter names match the official code and diffusers'
``GatedSelfAttentionDense`` so that existing GLIGEN weights load without renaming.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn


class GatedSelfAttention(nn.Module):
    """Gated self-attention over ``[visual tokens ; projected grounding tokens]``.

    ``v <- v + s * tanh(alpha_attn) * SelfAttn(LN([v ; W g]))[:, :N_v]`` then
    ``v <- v + s * tanh(alpha_dense) * FF(LN(v))``, where ``s = weight * beta`` is set by the injection code.
    Both alphas start at 0, so a fresh layer is an exact identity.
    """

    def __init__(self, *, query_dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = Attention(query_dim=query_dim, heads=heads, dim_head=dim_head)
        self.ff = FeedForward(query_dim, activation_fn="geglu")
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))
        # adapter weight x scheduled-sampling beta; a float, not an on/off flag (GLIGEN Sec. 3.3)
        self.scale = 1.0

    def forward(self, hidden_states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """hidden_states: (B, N_v, C) visual tokens; tokens: (B, N_g, context_dim). Returns (B, N_v, C)."""
        if self.scale == 0.0:
            return hidden_states
        n_visual = hidden_states.shape[1]
        grounding = self.linear(tokens.to(hidden_states.dtype))
        attended = self.attn(self.norm1(torch.cat([hidden_states, grounding], dim=1)))[:, :n_visual]
        hidden_states = hidden_states + self.scale * self.alpha_attn.tanh() * attended
        hidden_states = hidden_states + self.scale * self.alpha_dense.tanh() * self.ff(self.norm2(hidden_states))
        return hidden_states


class GroundingFuser(nn.Module):
    """What a transformer block calls as ``self.fuser``: one :class:`GatedSelfAttention` per loaded adapter.

    ``tokens_by_adapter`` maps adapter names to their grounding tokens. An adapter with no tokens in this call (its
    modalities are absent from the layout) is skipped, so it costs nothing and changes nothing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()

    def forward(self, hidden_states: torch.Tensor, tokens_by_adapter: dict[str, torch.Tensor]) -> torch.Tensor:
        for name, layer in self.layers.items():
            tokens = tokens_by_adapter.get(name)
            if tokens is not None:
                hidden_states = layer(hidden_states, tokens)
        return hidden_states
