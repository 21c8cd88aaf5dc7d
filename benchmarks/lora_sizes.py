"""Grounding-LoRA file sizes on an SD-1.5-shaped boxes adapter (random weights, nothing downloaded).

    python -m benchmarks.lora_sizes

Also times the parent fingerprint (a hash of every parent weight) that adding, saving and loading a LoRA compute.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from gligen_ext import (
    add_adapter_lora,
    add_grounding_adapter,
    load_adapter_lora,
    save_adapter_lora,
    save_grounding_adapter,
    unload_adapter_lora,
)
from gligen_ext.lora import parent_identity

from .shapes import sd15_unet

CASES = {"rank 4, gated layers": dict(rank=4), "rank 4, gated layers + position_net": dict(rank=4, position_net=True)}


def measure() -> dict:
    unet = sd15_unet()
    add_grounding_adapter(unet, ["boxes"])
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        parent = save_grounding_adapter(unet, Path(folder) / "boxes.safetensors", dtype="fp16")
        results["parent adapter"] = {"fp16_file_bytes": parent.stat().st_size}
        start = time.perf_counter()
        parent_identity(unet, "default")
        results["parent fingerprint seconds"] = round(time.perf_counter() - start, 2)
        for label, options in CASES.items():
            params = add_adapter_lora(unet, **options)
            row = {"lora_params": sum(p.numel() for p in params)}
            for dtype in ("fp32", "fp16"):
                path = save_adapter_lora(unet, Path(folder) / f"{dtype}.safetensors", dtype=dtype)
                row[f"{dtype}_file_bytes"] = path.stat().st_size
            unload_adapter_lora(unet)
            start = time.perf_counter()
            load_adapter_lora(unet, path)
            row["load_seconds"] = round(time.perf_counter() - start, 2)
            unload_adapter_lora(unet)
            results[label] = row
    return results


if __name__ == "__main__":
    results = measure()
    print(json.dumps(results, indent=2))
