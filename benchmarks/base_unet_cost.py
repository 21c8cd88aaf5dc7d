"""Training cost of the shapes-world base UNet with more layers per block, as a ratio measured in one run.

    python -m benchmarks.base_unet_cost                       # 1 layer per block against (1, 2, 2)
    python -m benchmarks.base_unet_cost --layers 1 1,2,2 2 --steps 10 --rounds 2

Each variant is configs/shapes_base.yaml's UNet with another ``layers_per_block`` (diffusers takes one per level),
timed for a UNet training step alone (batch 32 of 16x16 latents, forward, backward and AdamW) on random inputs. The
variants alternate over the rounds, so that a machine that speeds up or slows down affects all alike; the ratio is to
the first variant.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from training.base_config import load_base_config
from training.base_model import build_unet, latent_size

SHAPES_BASE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "shapes_base.yaml"


def shapes_unet(layers_per_block: int | Sequence[int]) -> UNet2DConditionModel:
    """The shipped base's UNet (configs/shapes_base.yaml) with ``layers_per_block`` (one, or one per level)."""
    depth = layers_per_block if isinstance(layers_per_block, int) else list(layers_per_block)
    config = load_base_config(SHAPES_BASE_CONFIG, ["--unet.layers_per_block", json.dumps(depth)])
    return build_unet(config.unet, latent_size=latent_size(config), latent_channels=config.vae.latent_channels,
                      cross_attention_dim=config.text_encoder.hidden_size)


def seconds_per_step(unet: UNet2DConditionModel, *, steps: int, batch_size: int = 32, warmup: int = 3) -> float:
    """Mean seconds of one training step of ``unet`` alone after ``warmup`` untimed steps."""
    torch.manual_seed(0)
    size, channels = unet.config.sample_size, unet.config.in_channels
    latents = torch.randn(batch_size, channels, size, size)
    timesteps = torch.randint(0, 1000, (batch_size,))
    hidden = torch.randn(batch_size, 32, unet.config.cross_attention_dim)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        unet(latents, timesteps, hidden).sample.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="+", default=["1", "1,2,2"],
                        help="layers_per_block variants: one number, or one per level (default: 1 1,2,2)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant and round (default: 10)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default: 2)")
    args = parser.parse_args()
    unets = {spec: shapes_unet([int(n) for n in spec.split(",")] if "," in spec else int(spec))
             for spec in args.layers}
    times: dict[str, list[float]] = {spec: [] for spec in unets}
    for _ in range(args.rounds):
        for spec, unet in unets.items():
            times[spec].append(seconds_per_step(unet, steps=args.steps))
    first = min(times[args.layers[0]])
    report = {spec: {"parameters_m": round(sum(p.numel() for p in unets[spec].parameters()) / 1e6, 2),
                     "seconds_per_step": [round(t, 3) for t in times[spec]],
                     "ratio": round(min(times[spec]) / first, 2)} for spec in unets}
    print(json.dumps({"batch_size": 32, "threads": torch.get_num_threads(), "layers_per_block": report}, indent=2))


if __name__ == "__main__":
    main()
