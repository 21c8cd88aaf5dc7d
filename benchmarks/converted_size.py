"""Size of a box adapter converted from an SD-1.5-shaped diffusers GLIGEN UNet (random weights, nothing downloaded).

    python -m benchmarks.converted_size      # needs about 9 GB of temporary disk and 6 GB of memory

Builds diffusers' own gated UNet (``attention_type="gated"``), saves it with ``save_pretrained`` and runs
``gligen-ext convert --dtype fp16`` on the folder, as a user would on ``masterful/gligen-1-4-generation-text-box``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from gligen_ext.cli import main

from .shapes import SD15_UNET


def measure() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        UNet2DConditionModel(**SD15_UNET, attention_type="gated").save_pretrained(Path(folder) / "unet")
        out = Path(folder) / "boxes-fp16.safetensors"
        start = time.perf_counter()
        if main(["convert", str(Path(folder) / "unet"), "--out", str(out), "--dtype", "fp16"]) != 0:
            raise SystemExit("conversion failed")
        return {"fp16_file_bytes": out.stat().st_size, "convert_seconds": round(time.perf_counter() - start, 1)}


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
