"""One denoising step of the UNet: grounded ÷ base per setting (with the FLOP floor beside it), and gligen-ext ÷
diffusers' own GLIGEN UNet (``attention_type="gated"``) on identical weights and inputs, in time and peak memory.

Grounded runs pass the same ``gligen`` inputs at every call, as a pipeline does within one generation, so the
tokens and the gated layers' grounding keys and values come from their per-generation caches after the first call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel

from gligen_ext import adapter_parameters, add_grounding_adapter

from .flops import flop_floors
from .measure import Spread, peak_memory, ratio, time_rounds
from .setups import SETTINGS, Setup, all_slots_on


def unet_inputs(unet: UNet2DConditionModel, *, batch: int, latent_size: int, device: torch.device,
                dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, 77-token text context) of one step, seeded."""
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, unet.config.in_channels, latent_size, latent_size, generator=generator)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
    return sample.to(device, dtype), torch.full((batch,), 500, device=device), context.to(device, dtype)


def unet_call(unet: UNet2DConditionModel, inputs: tuple, gligen: dict | None) -> Callable[[], torch.Tensor]:
    """A no-argument step: ``unet(*inputs)`` with ``gligen`` grounding (None: the base UNet's work)."""
    kwargs = {"cross_attention_kwargs": {"gligen": gligen}} if gligen else {}

    def step() -> torch.Tensor:
        with torch.no_grad():
            return unet(*inputs, **kwargs).sample

    return step


def grounded_steps(setup: Setup, device: torch.device) -> dict:
    """Per-step time of each setting of :data:`SETTINGS` (every token slot in use, gates on) ÷ the base UNet.

    One UNet holds one adapter per setting; a call grounds with one of them, the others find no tokens and do no
    work. The base variant is the same UNet called without grounding, which is what a layout-free call costs.
    """
    unet = setup.unet().to(device)
    inputs = unet_inputs(unet, batch=setup.step_batch, latent_size=setup.step_size // setup.latent_factor,
                         device=device)
    gligen = {}
    for name, modalities in SETTINGS.items():
        adapter = add_grounding_adapter(unet, modalities, adapter_name=name)
        gligen[name] = {name: all_slots_on(adapter, setup.step_batch, device=device)}
    variants = {"base": unet_call(unet, inputs, None)} | {n: unet_call(unet, inputs, g) for n, g in gligen.items()}
    times = time_rounds(variants, device=device, warmup=setup.warmup, rounds=setup.rounds)
    floors = flop_floors(image_size=setup.step_size, unet_config=setup.unet_config, latent_factor=setup.latent_factor)
    return {
        "image_size": setup.step_size,
        "batch": setup.step_batch,
        "base_step_s": Spread.of(times["base"]).as_dict(),
        "settings": {
            name: {"step_s": Spread.of(times[name]).as_dict(), "ratio": ratio(times, name, "base").as_dict(),
                   "flop_floor": round(floors[name], 4)}
            for name in SETTINGS
        },
    }


def twin_unets(setup: Setup, device: torch.device) -> tuple[UNet2DConditionModel, UNet2DConditionModel]:
    """(diffusers' gated UNet, the base UNet + a gligen-ext box adapter) with identical weights, as in
    ``tests/test_diffusers_contract.py``."""
    torch.manual_seed(0)
    theirs = UNet2DConditionModel(**setup.unet_config, attention_type="gated").eval()
    ours = UNet2DConditionModel(**setup.unet_config).eval()
    state = theirs.state_dict()
    ours.load_state_dict(state, strict=False)
    add_grounding_adapter(ours, "boxes")
    with torch.no_grad():
        for key, param in adapter_parameters(ours, "default").items():
            param.copy_(state[key])
    return theirs.to(device), ours.to(device)


def box_inputs(batch: int, width: int, *, device: torch.device, seed: int = 1) -> dict[str, torch.Tensor]:
    """30 random boxes, all in use, with random phrase embeddings of ``width``."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, 30, 2, 2, generator=generator).sort(dim=2).values
    boxes = torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], dim=-1)
    embeddings = torch.randn(batch, 30, width, generator=generator)
    return {"boxes": boxes.to(device), "masks": torch.ones(batch, 30, device=device),
            "positive_embeddings": embeddings.to(device)}


def versus_diffusers(setup: Setup, device: torch.device) -> dict:
    """gligen-ext ÷ diffusers' GLIGEN UNet per step (boxes, 30 tokens, gates on): time and peak memory, and the
    largest difference of their outputs (they compute the same function)."""
    theirs, ours = twin_unets(setup, device)
    inputs = unet_inputs(ours, batch=setup.step_batch, latent_size=setup.step_size // setup.latent_factor,
                         device=device)
    boxes = box_inputs(setup.step_batch, ours.config.cross_attention_dim, device=device)
    variants = {"gligen-ext": unet_call(ours, inputs, {"default": {"boxes": boxes}}),
                "diffusers": unet_call(theirs, inputs, boxes)}
    difference = (variants["gligen-ext"]() - variants["diffusers"]()).abs().max().item()
    times = time_rounds(variants, device=device, warmup=setup.warmup, rounds=setup.rounds)
    memory = {name: peak_memory(fn, device=device) for name, fn in variants.items()}
    return {
        "image_size": setup.step_size,
        "batch": setup.step_batch,
        "max_abs_difference": difference,
        "step_s": {name: Spread.of(t).as_dict() for name, t in times.items()},
        "time_ratio": ratio(times, "gligen-ext", "diffusers").as_dict(),
        "peak_memory_bytes": memory,
        "memory_ratio": round(memory["gligen-ext"] / max(memory["diffusers"], 1), 4),
    }
