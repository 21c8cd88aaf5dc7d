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


def write_tiny_base(folder: Path, *, sdxl: bool = False, vae_scale_8: bool = False) -> Path:
    """Save tiny SD (or SDXL) components as a diffusers folder, the way a real base model is stored. With
    ``vae_scale_8`` the VAE downsamples 8x like SD's (the latent cache assumes it)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline

    if sdxl:
        pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(folder / "tokenizer-src"))
    else:
        pipe = StableDiffusionPipeline(**tiny_sd_components(folder / "tokenizer-src"))
    if vae_scale_8:
        pipe.register_modules(vae=AutoencoderKL(
            block_out_channels=(32, 32, 32, 32), latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        ).eval())
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
    for i in range(max(count, 1)):
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
    good, rows = rows[0], rows[:count]
    broken = [
        {"image": {"bytes": b"not an image", "path": None}},
        {"layout": json.dumps({"units": "normalized", "boxes": [{"box": [0.2, 0.2, 1.7, 0.5], "phrase": "x"}]})},
        {"layout": json.dumps({"units": "normalized"})},
    ]
    rows += [good | broken[j % len(broken)] for j in range(bad)]
    table = datasets.Dataset.from_list(rows, features=record_features(["depth"]))
    table.save_to_disk(str(folder / "records"))
    return folder / "records"


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state, so the next in-process run builds its own ``Accelerator``."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def tiny_overrides(base: Path, records: Path, output_dir: Path, **extra: object) -> list[str]:
    """CLI overrides that point a config at tiny components and records, with a few short steps."""
    values = {
        "model.pretrained": base, "model.vae": "none", "data.train": records, "data.resolution": 32,
        "data.num_workers": 0, "train.output_dir": output_dir, "train.max_steps": 2, "train.batch_size": 2,
        "train.gradient_accumulation_steps": 1, "train.mixed_precision": "no", "train.checkpoint_every": 2,
        "log.every": 1, "log.sample_every": 0,
    } | {key.replace("__", "."): value for key, value in extra.items()}
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def logged_losses(records: list) -> list[float]:
    """The losses of the ``step N ... loss X`` console lines."""
    import re

    found = (re.search(r"\bstep \d+ epoch .*loss (\S+)", r.getMessage()) for r in records)
    return [float(m.group(1)) for m in found if m]
