"""Speed-up of one training epoch's data work (read + augment + VAE encode + phrase encode) when the VAE latents and
phrase embeddings come from the cache of ``training.caching`` instead (random weights, nothing downloaded).

    python -m benchmarks.data_cache      # tiny components at 64², SD-1.5 shapes (VAE at 256², CLIP-L text)
    python -m benchmarks.data_cache --shapes tiny --images 64

The one-time cost of building the cache is reported beside it, with the epochs after which caching has paid off.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from collections.abc import Callable

import datasets
import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel

from gligen_ext import PhraseEncoder
from gligen_ext.testing import tiny_text_encoder, tiny_tokenizer, tiny_vae
from training.caching import cache_latents, cache_phrase_embeddings
from training.data import LayoutExamples, collate_examples
from training.records import record_features

from .shapes import CLIP_L_TEXT, SD15_VAE

RESOLUTIONS = {"tiny": 64, "sd15": 256}  # the tiny VAE downsamples 2x, so it is meant for small images
PHRASES = ("person", "dog", "red car", "bicycle", "a wooden chair", "cat", "traffic light", "umbrella", "bench",
           "a tall tree", "horse", "cup", "laptop", "potted plant", "clock", "kite")


def synthetic_records(count: int, *, seed: int = 0) -> datasets.Dataset:
    """``count`` JPEG records of 320x240 with 2-5 phrase boxes each."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        small = rng.integers(0, 256, (15, 20, 3), dtype=np.uint8)  # smooth, photo-like JPEG sizes
        buffer = io.BytesIO()
        Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
        boxes = []
        for _ in range(rng.integers(2, 6)):
            x0, y0 = rng.uniform(0, 0.6, 2)
            w, h = rng.uniform(0.15, 0.4, 2)
            boxes.append({"box": [x0, y0, x0 + w, y0 + h], "phrase": str(rng.choice(PHRASES))})
        rows.append({"image": {"bytes": buffer.getvalue(), "path": None}, "caption": "a photo",
                     "layout": json.dumps({"boxes": boxes})})
    return datasets.Dataset.from_list(rows, features=record_features(maps=()))


def epoch_seconds(examples: LayoutExamples, batch_size: int, encode_latents: Callable,
                  encode_phrases: Callable) -> float:
    """Wall time of one pass: examples -> batches -> latents (B, 4, h, w) and phrase embeddings (n, width)."""
    loader = torch.utils.data.DataLoader(examples, batch_size=batch_size, collate_fn=collate_examples)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            encode_latents(batch)
            encode_phrases([box["phrase"] for layout in batch["layouts"] for box in layout.get("boxes", [])])
    return time.perf_counter() - start


def measure(shape: str, *, images: int, resolution: int | None, batch_size: int) -> dict:
    records = synthetic_records(images)
    resolution = resolution or RESOLUTIONS[shape]
    if shape == "sd15":
        torch.manual_seed(0)
        vae, text_encoder = AutoencoderKL(**SD15_VAE).eval(), CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)).eval()
    else:
        vae, text_encoder = tiny_vae(), tiny_text_encoder()
    with tempfile.TemporaryDirectory() as folder:
        encoder = PhraseEncoder(tiny_tokenizer(f"{folder}/tokenizer"), text_encoder)
        options = dict(resolution=resolution, modalities=["boxes"], seed=0, random_crop=False)

        def vae_latents(batch: dict) -> torch.Tensor:
            return vae.encode(batch["pixel_values"]).latent_dist.mean * vae.config.scaling_factor

        with torch.no_grad():  # first calls set up kernels; keep that out of both timings
            vae.encode(torch.zeros(1, 3, resolution, resolution))
            encoder(["warm-up"])
        direct = epoch_seconds(LayoutExamples(records, **options), batch_size, vae_latents, encoder)
        reading = epoch_seconds(LayoutExamples(records, **options), batch_size, lambda b: None, lambda p: None)
        start = time.perf_counter()
        cached_records = cache_latents(records, vae, resolution=resolution, batch_size=batch_size,
                                       cache_dir=f"{folder}/cache")
        cached_encoder = cache_phrase_embeddings(records, encoder, cache_dir=f"{folder}/cache")
        build = time.perf_counter() - start
        cached = epoch_seconds(LayoutExamples(cached_records, **options), batch_size, lambda b: b["latents"],
                               cached_encoder)
    return {"images": images, "resolution": resolution, "uncached_epoch_s": round(direct, 3),
            "uncached_read_augment_only_s": round(reading, 3),
            "cached_epoch_s": round(cached, 3), "speedup": round(direct / cached, 1),
            "cache_build_s": round(build, 3), "break_even_epochs": round(build / max(direct - cached, 1e-9), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", choices=["tiny", "sd15", "both"], default="both")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--resolution", type=int, help=f"image side (default {RESOLUTIONS})")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    datasets.disable_progress_bars()
    shapes = ["tiny", "sd15"] if args.shapes == "both" else [args.shapes]
    results = {s: measure(s, images=args.images, resolution=args.resolution, batch_size=args.batch_size)
               for s in shapes}
    print(json.dumps(results, indent=2))
    print(f"torch threads: {torch.get_num_threads()}")
    print("| components | uncached epoch | cached epoch | speed-up | cache build (once) | break-even epochs |")
    print("|---|---:|---:|---:|---:|---:|")
    for shape, row in results.items():
        print(f"| {shape} | {row['uncached_epoch_s']:.2f} s | {row['cached_epoch_s']:.2f} s | {row['speedup']}x | "
              f"{row['cache_build_s']:.2f} s | {row['break_even_epochs']} |")


if __name__ == "__main__":
    main()
