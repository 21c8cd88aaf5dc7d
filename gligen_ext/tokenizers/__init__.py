"""Grounding tokenizers. Every module in this package is imported so that its ``@register_tokenizer`` runs."""

import importlib
import pkgutil

from .base import (
    GroundingDims,
    GroundingEncoders,
    GroundingTokenizer,
    available_modalities,
    build_tokenizer,
    fourier_embed,
    get_tokenizer_class,
    register_tokenizer,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "GroundingDims",
    "GroundingEncoders",
    "GroundingTokenizer",
    "available_modalities",
    "build_tokenizer",
    "fourier_embed",
    "get_tokenizer_class",
    "register_tokenizer",
]
