"""What every ``gligen-ext`` command shares: quiet libraries and loading a base model with one-line errors."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hold back diffusers' and transformers' warnings (hub retries, renames) so that errors stay one line."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(module, module.get_verbosity()) for module in (diffusers_logging, transformers_logging)]
    for module, _ in saved:
        module.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # e.g. diffusers' torch_dtype -> dtype rename
            yield
    finally:
        for module, level in saved:
            module.set_verbosity(level)


def load_base(base: str, torch_dtype: Any, *, kind: str = "base model") -> Any:
    """``from_pretrained`` (a grounded SD pipeline, or for ``kind="upscaler"`` whatever pipeline the folder names)
    with a one-line error for a model it cannot find."""
    with quiet_libraries():
        from diffusers import DiffusionPipeline

        from .pipelines import GroundedStableDiffusionPipeline

        loader = DiffusionPipeline if kind == "upscaler" else GroundedStableDiffusionPipeline
        try:
            return loader.from_pretrained(base, torch_dtype=torch_dtype)
        except (OSError, ValueError) as error:  # huggingface_hub's errors are OSErrors
            reason = "not a local diffusers folder and not reachable on the Hugging Face hub"
            raise ValueError(f"cannot load {kind} '{base}': {error if Path(base).is_dir() else reason}") from error

