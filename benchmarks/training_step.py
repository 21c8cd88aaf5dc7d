"""One training step of a box adapter on a frozen UNet: adapter-only gradients ÷ a step that also computes the frozen
base's weight gradients (what GLIGEN's official trainer does: its base weights keep ``requires_grad``, only the
optimizer leaves them alone). Time and peak memory; forward, backward and an AdamW update of the adapter."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from gligen_ext import adapter_parameters, add_grounding_adapter

from .measure import Spread, peak_memory, ratio, time_rounds
from .setups import Setup, all_slots_on
from .unet_steps import unet_inputs


def training_steps(setup: Setup, device: torch.device) -> dict:
    """Seconds and peak memory of a step with adapter-only gradients and of one with every gradient."""
    unet = setup.unet().to(device).train()
    adapter = add_grounding_adapter(unet, "boxes")
    trained = list(adapter_parameters(unet, "default").values())
    trained_ids = {id(p) for p in trained}
    frozen = [p for p in unet.parameters() if id(p) not in trained_ids]
    optimizer = torch.optim.AdamW(trained, lr=1e-5)
    sample, timesteps, context = unet_inputs(unet, batch=setup.train_batch,
                                             latent_size=setup.train_size // setup.latent_factor, device=device)
    target = torch.randn_like(sample)
    gligen = {"default": all_slots_on(adapter, setup.train_batch, device=device)}

    def step(all_gradients: bool) -> Callable[[], None]:
        def run() -> None:
            for param in frozen:
                param.requires_grad_(all_gradients)
            prediction = unet(sample, timesteps, context, cross_attention_kwargs={"gligen": gligen}).sample
            F.mse_loss(prediction, target).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for param in frozen:
                param.grad = None
                param.requires_grad_(False)
        return run

    variants = {"adapter-only": step(False), "all gradients": step(True)}
    times = time_rounds(variants, device=device, warmup=setup.warmup, rounds=setup.rounds)
    memory = {name: peak_memory(fn, device=device) for name, fn in variants.items()}
    return {
        "image_size": setup.train_size,
        "batch": setup.train_batch,
        "trained_params": sum(p.numel() for p in trained),
        "frozen_params": sum(p.numel() for p in frozen),
        "step_s": {name: Spread.of(t).as_dict() for name, t in times.items()},
        "time_ratio": ratio(times, "adapter-only", "all gradients").as_dict(),
        "peak_memory_bytes": memory,
        "memory_ratio": round(memory["adapter-only"] / max(memory["all gradients"], 1), 4),
    }
