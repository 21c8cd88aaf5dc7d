"""Tiny offline inputs for the training tests: a saved tiny Stable Diffusion (or SDXL) folder and a record table."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from gligen_ext.layout import COCO_KEYPOINTS
from gligen_ext.testing import tiny_sd_components, tiny_sdxl_components
from training.records import record_features

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write_tiny_base(folder: Path, *, sdxl: bool = False) -> Path:
    """Save tiny SD (or SDXL) components as a diffusers folder, the way a real base model is stored."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if sdxl:
        pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(folder / "tokenizer-src"))
    else:
        pipe = StableDiffusionPipeline(**tiny_sd_components(folder / "tokenizer-src"))
    pipe.save_pretrained(folder / "base")
    return folder / "base"


def _person(rng: np.random.Generator) -> dict:
    centre = rng.uniform(0.3, 0.7, 2)
    points = [[*np.clip(centre + rng.uniform(-0.2, 0.2, 2), 0, 1).round(3).tolist(), 2] for _ in COCO_KEYPOINTS]
    return {"points": points}


def write_tiny_records(folder: Path, *, count: int = 8, size: int = 40, bad: int = 0, seed: int = 0) -> Path:
    """``count`` records of ``size``-px pictures, each with two boxes, one person and a depth map, then ``bad``
    broken rows (an unreadable image, a box outside the image, ...), saved with ``save_to_disk``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        depth = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
        layout = {
            "units": "normalized",
            "boxes": [
                {"box": [0.1, 0.1, 0.5 + 0.05 * (i % 4), 0.6], "phrase": f"red thing {i}"},
                {"box": [0.4, 0.3, 0.9, 0.95], "phrase": "a blue square"},
            ],
            "keypoints": [_person(rng)],
        }
        rows.append({"image": Image.fromarray(pixels), "caption": f"picture {i}", "layout": json.dumps(layout),
                     "depth": Image.fromarray(depth)})
    broken = [
        {"image": {"bytes": b"not an image", "path": None}},
        {"layout": json.dumps({"units": "normalized", "boxes": [{"box": [0.2, 0.2, 1.7, 0.5], "phrase": "x"}]})},
        {"layout": json.dumps({"units": "normalized"})},
    ]
    for j in range(bad):
        rows.append(rows[0] | broken[j % len(broken)])
    table = datasets.Dataset.from_list(rows, features=record_features(["depth"]))
    table.save_to_disk(str(folder / "records"))
    return folder / "records"
