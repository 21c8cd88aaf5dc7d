"""The shapes-world models that ship inside the package: a base pipeline folder and four adapters, all fp16.

``weights/manifest.json`` records how each file was made (config, seeds, steps, measured scores, SHA-256);
``python -m training.ship_shapes_world`` writes the folder from finished training runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ADAPTER_NAMES: tuple[str, ...] = ("boxes", "keypoints", "depth", "multi")
MANIFEST_NAME = "manifest.json"


class ShippedWeightsError(FileNotFoundError):
    """A shipped model file is missing (a checkout without the weights, or a name that was never shipped)."""


def base_folder(weights_dir: str | Path = WEIGHTS_DIR) -> Path:
    """The base text-to-image model: an ordinary diffusers Stable Diffusion folder."""
    folder = Path(weights_dir) / "base"
    if not (folder / "model_index.json").is_file():
        raise ShippedWeightsError(
            f"shapes-world base model: '{folder}' holds no model_index.json; the weights ship with the repository "
            "(git checkout gligen_ext/shapes_world/weights) or are rebuilt by training/SHAPES_WORLD.md")
    return folder


def adapter_file(name: str, weights_dir: str | Path = WEIGHTS_DIR) -> Path:
    """The shipped adapter ``name`` (one of :data:`ADAPTER_NAMES`)."""
    if name not in ADAPTER_NAMES:
        raise ShippedWeightsError(f"adapter: {name!r} is not a shipped shapes-world adapter; choose one of "
                                  f"{', '.join(ADAPTER_NAMES)}")
    path = Path(weights_dir) / "adapters" / f"{name}.safetensors"
    if not path.is_file():
        raise ShippedWeightsError(f"adapter: '{path}' is missing; rebuild it with training/SHAPES_WORLD.md")
    return path


def shipped_adapters(weights_dir: str | Path = WEIGHTS_DIR) -> dict[str, Path]:
    """Name -> file of every shipped adapter present."""
    folder = Path(weights_dir) / "adapters"
    return {name: folder / f"{name}.safetensors" for name in ADAPTER_NAMES
            if (folder / f"{name}.safetensors").is_file()}


def read_manifest(weights_dir: str | Path = WEIGHTS_DIR) -> dict[str, Any]:
    """The manifest: for the base and each adapter, its config, seed, steps, scores and file digests."""
    path = Path(weights_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ShippedWeightsError(f"'{path}' is missing; python -m training.ship_shapes_world writes it")
    return json.loads(path.read_text(encoding="utf-8"))
