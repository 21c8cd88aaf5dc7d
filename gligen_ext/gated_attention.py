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
        self._kv_cache: tuple | None = None  # (key, tokens, keys, values) of the last grounding tokens seen

    def forward(self, hidden_states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """hidden_states: (B, N_v, C) visual tokens; tokens: (B, N_g, context_dim). Returns (B, N_v, C)."""
        if self.scale == 0.0:
            return hidden_states
        key, value = self.grounding_keys_values(tokens.to(hidden_states.dtype))
        attended = attend_with_extra_keys(self.attn, self.norm1(hidden_states), key, value)
        if attended is None:  # a processor the split path does not know: Eq. 8 as written
            grounding = self.linear(tokens.to(hidden_states.dtype))
            n_visual = hidden_states.shape[1]
            attended = self.attn(self.norm1(torch.cat([hidden_states, grounding], dim=1)))[:, :n_visual]
        hidden_states = hidden_states + self.scale * self.alpha_attn.tanh() * attended
        hidden_states = hidden_states + self.scale * self.alpha_dense.tanh() * self.ff(self.norm2(hidden_states))
        return hidden_states

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
