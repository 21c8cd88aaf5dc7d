"""The FLOP floor of grounding: UNet FLOPs with gated layers on, divided by the base UNet's, from shapes alone.

The model is built on the meta device, so nothing is computed or allocated; ``torch.utils.flop_counter`` counts the
FLOPs of every matmul and convolution of one forward. Any exact implementation of GLIGEN pays at least this ratio
per denoising step while grounding is on.

    python -m benchmarks.flops [--size 512]
"""

from __future__ import annotations

import argparse
import json

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from gligen_ext import add_grounding_adapter, unload_grounding_adapters

from .setups import SETTINGS, all_slots_on
from .shapes import SD15_UNET


def unet_flops(unet: torch.nn.Module, *, latent_size: int, gligen: dict | None = None) -> int:
    """FLOPs of one UNet forward at batch 1 and a (latent_size x latent_size) latent, 77 text tokens."""
    sample = torch.empty(1, unet.config.in_channels, latent_size, latent_size, device="meta")
    context = torch.empty(1, 77, unet.config.cross_attention_dim, device="meta")
    kwargs = {"cross_attention_kwargs": {"gligen": gligen}} if gligen else {}
    with FlopCounterMode(display=False) as counter:
        unet(sample, torch.tensor([500], device="meta"), context, **kwargs)
    return counter.get_total_flops()


def flop_floors(*, image_size: int = 512, unet_config: dict = SD15_UNET, latent_factor: int = 8) -> dict[str, float]:
    """Setting name -> grounded / base FLOPs for a UNet of ``unet_config`` (SD-1.5) at ``image_size`` pixels."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    latent_size = image_size // latent_factor
    base = unet_flops(unet, latent_size=latent_size)
    floors = {}
    for name, modalities in SETTINGS.items():
        adapter = add_grounding_adapter(unet, modalities)
        inputs = all_slots_on(adapter, 1, device="meta")
        floors[name] = unet_flops(unet, latent_size=latent_size, gligen={"default": inputs}) / base
        unload_grounding_adapters(unet)
    return floors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (latent = size / 8)")
    args = parser.parse_args()
    print(json.dumps({k: round(v, 4) for k, v in flop_floors(image_size=args.size).items()}, indent=1))


if __name__ == "__main__":
    main()
