"""What the UNet calls as ``self.position_net(**gligen)``: every loaded adapter's tokenizers, and a token cache.

diffusers' UNet passes ``cross_attention_kwargs["gligen"]`` to ``position_net`` and hands the result to every
transformer block's fuser. Here that input is ``{adapter: {modality: tensors}}`` and the result is
``{adapter: tokens}``; :mod:`gligen_ext.inject` attaches it and the fusers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .tokenizers import GroundingTokenizer


class AdapterTokenizers(nn.Module):
    """One adapter's tokenizers (one per modality) and its runtime settings: weight, beta and enabled."""

    def __init__(self, tokenizers: dict[str, GroundingTokenizer]) -> None:
        super().__init__()
        self.tokenizers = nn.ModuleDict(tokenizers)
        self.weight, self.beta, self.enabled = 1.0, 1.0, True
        self.source: str | None = None  # the file it was loaded from, recorded by load_grounding_adapter
        self.lora: Any = None  # an attached LoRA's settings, kept by gligen_ext.lora

    @property
    def scale(self) -> float:
        """The factor on every gated residual of this adapter: ``weight * beta``, or 0 when disabled."""
        return float(self.weight * self.beta) if self.enabled else 0.0

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        """inputs: modality -> tokenizer inputs. Returns (B, N_total, token_dim), modalities concatenated in order.

        A modality this adapter knows but the call lacks gets its null inputs, so a jointly trained adapter always
        sees the token sequence it was trained with.
        """
        reference = next(iter(next(iter(inputs.values())).values()))
        tokens = []
        for modality, tokenizer in self.tokenizers.items():
            given = inputs.get(modality)
            if given is None:
                nulls = tokenizer.null_inputs(reference.shape[0])
                given = {k: v.to(reference.device, reference.dtype) for k, v in nulls.items()}
            tokens.append(tokenizer(**given))
        return torch.cat(tokens, dim=1)


class GroundingTokens(dict):
    """adapter name -> grounding tokens (B, N, token_dim), plus ``latent_size``: the UNet input's (H, W), which
    places the visual tokens of every level on their grid (read by gated layers with visual positions)."""

    latent_size: tuple[int, int] | None = None


class GroundingPositionNet(nn.Module):
    """What the UNet calls as ``self.position_net(**gligen)``: adapter name -> that adapter's grounding tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.hook_handles: list[Any] = []
        self.pending_inputs: dict[str, Any] | None = None
        self.latent_size: tuple[int, int] | None = None  # of the current UNet call, recorded at conv_in
        self.token_cache: dict[str, tuple] = {}
        self.original_requires_grad: dict[str, bool] = {}

    def forward(self, **inputs_by_adapter: dict[str, dict[str, torch.Tensor]]) -> GroundingTokens:
        tokens = GroundingTokens()
        tokens.latent_size = self.latent_size
        for name, inputs in inputs_by_adapter.items():
            adapter = self.adapters[name] if name in self.adapters else None
            # an adapter at scale 0 does no work at all: its fusers find no tokens and return their input
            if adapter is not None and adapter.scale != 0.0 and inputs:
                tokens[name] = self._cached_tokens(name, adapter, inputs)
        return tokens

    def _cached_tokens(self, name: str, adapter: AdapterTokenizers, inputs: dict) -> torch.Tensor:
        """Tokens depend only on the inputs and the weights, not on the timestep: a sampler passing the same inputs
        at every step gets them computed once. Training (gradients on) always recomputes."""
        if torch.is_grad_enabled():
            return adapter(inputs)
        # parameter versions change on any in-place update, so edited weights never hit a stale entry
        key = (name, id(inputs), tuple(p._version for p in adapter.parameters()))
        cached = self.token_cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, inputs, adapter(inputs))  # holding `inputs` keeps its id from being reused
            self.token_cache[name] = cached
        return cached[2]
