"""Turn layouts into the ``cross_attention_kwargs["gligen"]`` inputs of a grounded UNet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .inject import grounding_adapters
from .layout import Layout, parse_layouts
from .tokenizers import GroundingEncoders

GroundingInputs = dict[str, dict[str, dict[str, torch.Tensor]]]  # adapter -> modality -> tensor name -> tensor


class UnhandledModalityError(ValueError):
    """The layout asks for a modality that no loaded adapter can ground."""


def prepare_grounding(
    unet: nn.Module,
    layouts: Layout | dict[str, Any] | Sequence[Any] | str | None,
    encoders: GroundingEncoders | None = None,
    *,
    batch_size: int | None = None,
    width: int | None = None,
    height: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
) -> GroundingInputs:
    """Parse and tokenize-prepare layouts for every enabled adapter on ``unet``.

    ``layouts`` is one layout (dict, JSON path or :class:`Layout`) broadcast to ``batch_size``, or a list with one per
    sample. With ``strict``, a modality in the layouts that no enabled adapter handles raises
    :class:`UnhandledModalityError`; otherwise it is ignored. Returns ``{adapter: {modality: {name: (B, ...)}}}``;
    pass it as ``unet(..., cross_attention_kwargs={"gligen": inputs})``, once per generation, not once per step.
    """
    parsed = parse_layouts(layouts, batch_size=batch_size, width=width, height=height)
    encoders = encoders or GroundingEncoders()
    adapters = grounding_adapters(unet)
    if strict:
        check_modalities_handled(parsed, adapters)
    parameter = next(unet.parameters())
    device, dtype = device or parameter.device, dtype or parameter.dtype
    inputs: GroundingInputs = {}
    for name, adapter in adapters.items():
        prepared = {
            modality: _to(tokenizer.prepare(parsed, encoders), device, dtype)
            for modality, tokenizer in adapter.tokenizers.items()
            if any(tokenizer.handles(layout) for layout in parsed)
        }
        if prepared:
            inputs[name] = prepared
    return inputs


def null_grounding(inputs: GroundingInputs) -> GroundingInputs:
    """Inputs of the same shapes meaning "no grounding" — the unconditional branch of classifier-free guidance.

    Token masks become 0, so every slot takes its learned null, as GLIGEN's sampler does. The first-conv condition
    of spatial maps (``conv_masks``) is kept, also as in GLIGEN.
    """
    return {
        name: {
            modality: {
                key: value if key in ("conv_masks", "maps") else torch.zeros_like(value) for key, value in t.items()
            }
            for modality, t in per_modality.items()
        }
        for name, per_modality in inputs.items()
    }


def concat_grounding(*parts: GroundingInputs) -> GroundingInputs:
    """Concatenate inputs along the batch axis (e.g. ``concat_grounding(null_grounding(x), x)`` for CFG)."""
    first = parts[0]
    return {
        name: {m: {k: torch.cat([p[name][m][k] for p in parts]) for k in t} for m, t in per_modality.items()}
        for name, per_modality in first.items()
    }


def check_modalities_handled(layouts: Sequence[Layout], adapters: dict[str, nn.Module]) -> None:
    """Raise :class:`UnhandledModalityError` naming what the layouts ask for that no enabled adapter handles."""
    loaded = {m for adapter in adapters.values() if adapter.enabled for m in adapter.tokenizers}
    # an image-box adapter grounds phrase boxes as well
    covers = {m: {m} for m in loaded} | ({"image_boxes": {"image_boxes", "boxes"}} if "image_boxes" in loaded else {})
    handled = set().union(*covers.values()) if covers else set()
    wanted = set().union(*(layout.modalities() for layout in layouts)) if layouts else set()
    missing = sorted(wanted - handled)
    if missing:
        raise UnhandledModalityError(
            f"layout: {', '.join(missing)} given, but no loaded grounding adapter handles "
            f"{'it' if len(missing) == 1 else 'them'} (loaded modalities: {', '.join(sorted(loaded)) or 'none'}); "
            "load an adapter for it or remove it from the layout"
        )


def _to(tensors: dict[str, torch.Tensor], device: torch.device | str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in tensors.items()}
