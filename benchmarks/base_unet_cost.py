"""Training cost of the shapes-world base UNet with more layers per block, as a ratio measured in one run.

    python -m benchmarks.base_unet_cost                       # 1 layer per block against (1, 2, 2)
    python -m benchmarks.base_unet_cost --layers 1 1,2,2 2 --steps 10 --rounds 2

Each variant is configs/shapes_base.yaml's UNet with another ``layers_per_block`` (diffusers takes one per level),
timed for a UNet training step alone (batch 32 of 16x16 latents, forward, backward and AdamW) on random inputs. The
variants alternate over the rounds, so that a machine that speeds up or slows down affects all alike; the ratio is to
the first variant.

It also reports what each variant would weigh when shipped (fp16): the UNet plus the four shapes-world adapters
(configs/shapes_{boxes,keypoints,depth,multi}.yaml), whose gated layers grow with every transformer block the UNet
gains. The VAE and the text encoder (3.1 MB, the same for every variant) and the 40 MB limit of the shipped weights
are beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from gligen_ext import add_grounding_adapter, remove_grounding_adapter
from training.base_config import load_base_config
from training.base_model import build_unet, latent_size
from training.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SHAPES_BASE_CONFIG = CONFIGS / "shapes_base.yaml"
SHAPES_ADAPTERS = ("boxes", "keypoints", "depth", "multi")


def shapes_unet(layers_per_block: int | Sequence[int]) -> UNet2DConditionModel:
    """The shipped base's UNet (configs/shapes_base.yaml) with ``layers_per_block`` (one, or one per level)."""
    depth = layers_per_block if isinstance(layers_per_block, int) else list(layers_per_block)
    config = load_base_config(SHAPES_BASE_CONFIG, ["--unet.layers_per_block", json.dumps(depth)])
    return build_unet(config.unet, latent_size=latent_size(config), latent_channels=config.vae.latent_channels,
                      cross_attention_dim=config.text_encoder.hidden_size)


def adapter_parameters(unet: UNet2DConditionModel, name: str) -> int:
    """Parameters of configs/shapes_<name>.yaml's adapter on ``unet`` (which is left as it was)."""
    adapter = load_config(CONFIGS / f"shapes_{name}.yaml").adapter
    before = sum(p.numel() for p in unet.parameters())
    add_grounding_adapter(unet, adapter.modalities, adapter_name=f"size_{name}",
                          positive_len=unet.config.cross_attention_dim, tokenizer_options=adapter.tokenizer_options,
                          visual_position_freqs=adapter.visual_position_freqs, ff_mult=adapter.ff_mult)
    added = sum(p.numel() for p in unet.parameters()) - before
    remove_grounding_adapter(unet, f"size_{name}")
    return added


def shipped_bytes(unet: UNet2DConditionModel) -> int:
    """fp16 bytes of ``unet`` and the four shapes-world adapters trained on it."""
    parameters = sum(p.numel() for p in unet.parameters())
    return 2 * (parameters + sum(adapter_parameters(unet, name) for name in SHAPES_ADAPTERS))


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
                     "shipped_unet_and_adapters_mb": round(shipped_bytes(unets[spec]) / 1e6, 1),
                     "seconds_per_step": [round(t, 3) for t in times[spec]],
                     "ratio": round(min(times[spec]) / first, 2)} for spec in unets}
    print(json.dumps({"batch_size": 32, "threads": torch.get_num_threads(), "weights_limit_mb": 40,
                      "layers_per_block": report}, indent=2))


if __name__ == "__main__":
    main()
