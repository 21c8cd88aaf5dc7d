"""Adapter parameter counts and file sizes for an SD-1.5-shaped UNet (random weights, nothing downloaded).

    python -m benchmarks.adapter_sizes
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from torch import nn

from gligen_ext import GatedSelfAttention, add_grounding_adapter, save_grounding_adapter, unload_grounding_adapters

from .shapes import sd15_unet

CASES = {"boxes": ["boxes"], "depth": ["depth"], "boxes+keypoints+depth": ["boxes", "keypoints", "depth"]}
# published SD-1.x file sizes in bytes: GLIGEN's official checkpoints (the whole model, fp32), ControlNet (the
# fp16 release), T2I-Adapter (the depth/sketch adapters, fp16)
REFERENCE_BYTES = {
    "GLIGEN official box-text": 6.78e9,
    "GLIGEN official depth": 7.11e9,
    "ControlNet fp16": 723e6,
    "T2I-Adapter": 158e6,
}


def measure(unet: nn.Module | None = None) -> dict:
    """Adapter name -> parameter counts and fp16 file size, on ``unet`` (default: SD-1.5-shaped)."""
    unet = sd15_unet() if unet is None else unet
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, modalities in CASES.items():
            adapter = add_grounding_adapter(unet, modalities)
            gated = sum(p.numel() for m in unet.modules() if isinstance(m, GatedSelfAttention) for p in m.parameters())
            path = save_grounding_adapter(unet, Path(folder) / f"{label}.safetensors", dtype="fp16")
            results[label] = {
                "gated_layer_params": gated,
                "tokenizer_params": sum(p.numel() for p in adapter.parameters()),
                "fp16_file_bytes": path.stat().st_size,
            }
            unload_grounding_adapters(unet)
    return results


if __name__ == "__main__":
    results = measure()
    print(json.dumps(results, indent=2))
    print("| adapter | gated-layer params | tokenizer params | fp16 file |")
    print("|---|---:|---:|---:|")
    for label, row in results.items():
        size = row["fp16_file_bytes"] / 1e6
        print(f"| {label} | {row['gated_layer_params']:,} | {row['tokenizer_params']:,} | {size:.1f} MB |")
