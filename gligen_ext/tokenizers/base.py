"""The grounding-tokenizer contract and its registry.

A grounding tokenizer is GLIGEN's "position net" for one modality: it turns part of a layout into grounding tokens
``(B, N, token_dim)`` that the gated self-attention layers read. Adding a modality means writing one file in this
package with a subclass decorated by :func:`register_tokenizer`; it is discovered automatically. A modality whose
input is not among the core layout keys brings its own: ``layout_key`` and ``parse_layout_field`` (validation),
optionally ``transform_layout_field`` (crop and flip, for training data) and ``draw_layout_field`` (previews).
See ``training/NEW_MODALITY.md``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from ..layout import Layout, register_layout_field
from ..layout_fields import FieldContext

_REGISTRY: dict[str, type[GroundingTokenizer]] = {}


@dataclass(frozen=True)
class GroundingDims:
    """Widths a tokenizer must fit: the UNet's ``cross_attention_dim`` (token width), the phrase/image embedding width
    (``positive_len``, the text encoder's pooled width) and the UNet's ``conv_in`` output channels."""

    token_dim: int
    positive_len: int
    conv_in_channels: int


@dataclass
class GroundingEncoders:
    """Frozen encoders a tokenizer may need while preparing inputs.

    ``encode_phrases(list[str]) -> (n, positive_len)`` and ``encode_images(list[PIL.Image]) -> (n, positive_len)``.
    """

    encode_phrases: Callable[[list[str]], torch.Tensor] | None = None
    encode_images: Callable[[list[Image.Image]], torch.Tensor] | None = None


class GroundingTokenizer(nn.Module):
    """Base class. Subclasses set ``modality`` (via the decorator) and ``default_beta``, and implement
    :meth:`prepare`, :meth:`null_inputs` and :meth:`forward`.

    ``prepare`` and ``null_inputs`` are stateless and return plain float32 tensors keyed by ``forward``'s argument
    names, so inputs can be batched, concatenated for classifier-free guidance, or cached on disk.
    """

    modality: ClassVar[str] = ""
    # fraction of denoising steps with grounding on; GLIGEN's per-modality defaults (gligen.md Sec. 4.1)
    default_beta: ClassVar[float] = 0.3
    # the top-level layout key this modality adds (None: it reads the core keys of gligen_ext.layout)
    layout_key: ClassVar[str | None] = None

    def __init__(self, *, dims: GroundingDims, **options: Any) -> None:
        super().__init__()
        self.dims = dims
        self.options = dict(options)

    @classmethod
    def example_layout(cls) -> dict[str, Any]:
        """A small valid layout dict for this modality; the registry-wide contract tests run every tokenizer on it."""
        raise NotImplementedError(f"{cls.__name__} must define example_layout() for the contract tests")

    @classmethod
    def parse_layout_field(cls, value: Any, context: FieldContext) -> Any:
        """Validate and normalise the value under ``layout_key`` into what ``Layout.extras[layout_key]`` holds.

        Raise :class:`~gligen_ext.LayoutError` starting with ``context.path``; ``context`` converts coordinates
        given in pixels. Must accept its own output (and a normalised layout dict's value) again unchanged.
        """
        raise NotImplementedError(f"{cls.__name__} sets layout_key, so it must define parse_layout_field()")

    @classmethod
    def transform_layout_field(cls, value: Any, *, crop: tuple[float, float, float, float], flip: bool) -> Any:
        """The field seen through a crop, then a left-right mirror if ``flip``: ``crop`` is the kept window
        ``(x0, y0, x1, y1)`` in normalised coordinates of the source. Takes and returns normalised values (what
        ``parse_layout_field`` accepts); drops what falls outside. Training data augmentation calls it."""
        raise NotImplementedError(f"{cls.__name__} cannot crop or flip its layout field; train without augmentation")

    @classmethod
    def draw_layout_field(cls, image: Image.Image, value: Any) -> Image.Image:
        """``image`` with the parsed field drawn on a copy, for overlays and previews (default: not drawn)."""
        return image

    @property
    def num_tokens(self) -> int:
        """Number of grounding tokens this tokenizer emits per sample."""
        raise NotImplementedError

    def handles(self, layout: Layout) -> bool:
        """Whether ``layout`` holds anything for this tokenizer."""
        return self.modality in layout.modalities()

    def prepare(self, layouts: Sequence[Layout], encoders: GroundingEncoders) -> dict[str, torch.Tensor]:
        """Turn one layout per sample into ``forward`` inputs (float32, CPU), batch dimension first."""
        raise NotImplementedError

    def null_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Inputs meaning "no grounding" (all masks 0), used for padding, CFG and condition dropout."""
        raise NotImplementedError

    def conv_in_residual(
        self, inputs: dict[str, torch.Tensor], *, latents: torch.Tensor, conv_in: nn.Conv2d
    ) -> torch.Tensor | None:
        """Optional residual ``(B, conv_in_channels, h, w)`` added to the UNet's first-conv output.

        ``latents`` (B, C, h, w) is conv_in's input and ``conv_in`` the base layer, for tokenizers that carry a
        trained copy of its weight."""
        return None

    def init_from_base(self, conv_in: nn.Conv2d) -> None:
        """Called once when the adapter is injected, for tokenizers whose identity init depends on the base UNet."""

    def extra_repr(self) -> str:
        return f"modality={self.modality!r}, tokens={self.num_tokens}, options={self.options}"


def register_tokenizer(name: str) -> Callable[[type[GroundingTokenizer]], type[GroundingTokenizer]]:
    """Class decorator that registers a tokenizer under the modality ``name``."""

    def decorator(cls: type[GroundingTokenizer]) -> type[GroundingTokenizer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"a grounding tokenizer named {name!r} is already registered ({_REGISTRY[name].__name__})"
            )
        if cls.layout_key is not None:
            if cls.parse_layout_field.__func__ is GroundingTokenizer.parse_layout_field.__func__:
                raise ValueError(f"{cls.__name__} sets layout_key {cls.layout_key!r} but no parse_layout_field")
            register_layout_field(cls.layout_key, cls)
        cls.modality = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_modalities() -> list[str]:
    """Names of every registered modality, sorted."""
    return sorted(_REGISTRY)


def get_tokenizer_class(name: str) -> type[GroundingTokenizer]:
    """The tokenizer class registered as ``name``; a ``KeyError`` with a suggestion otherwise."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown grounding modality {name!r}{hint} Known: {', '.join(available_modalities())}")
    return _REGISTRY[name]


def build_tokenizer(name: str, *, dims: GroundingDims, **options: Any) -> GroundingTokenizer:
    """Instantiate the tokenizer registered as ``name``."""
    return get_tokenizer_class(name)(dims=dims, **options)


def fourier_embed(coords: torch.Tensor, *, num_freqs: int = 8, temperature: float = 100.0) -> torch.Tensor:
    """GLIGEN's Fourier features: ``(..., D)`` coordinates in [0, 1] -> ``(..., num_freqs * 2 * D)``.

    Frequencies ``temperature ** (k / num_freqs)``; layout ``[f0: sin(c), cos(c), f1: sin(c), cos(c), ...]``
    (frequency-major, sin before cos), the ordering official GLIGEN weights expect.
    """
    freqs = temperature ** (torch.arange(num_freqs, device=coords.device, dtype=coords.dtype) / num_freqs)
    angles = coords.unsqueeze(-2) * freqs.unsqueeze(-1)  # (..., F, D)
    return torch.stack([angles.sin(), angles.cos()], dim=-2).flatten(-3)  # (..., F * 2 * D)


def mlp(in_dim: int, out_dim: int, hidden: int = 512) -> nn.Sequential:
    """GLIGEN's three-layer SiLU MLP; indices 0, 2, 4 hold the weights (``linears.{0,2,4}.*``)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim)
    )


def blend_null(values: torch.Tensor, masks: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """``values * m + (1 - m) * null`` with ``masks`` broadcast over the trailing feature axis."""
    masks = masks.unsqueeze(-1).to(values.dtype)
    return values * masks + (1 - masks) * null.to(values.dtype)
