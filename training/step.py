"""One training step's maths: condition dropout, grounding inputs and the denoising loss.

Every random draw of an example (caption drop, grounding drop, timestep, VAE sample, noise) comes from a generator
seeded by ``(seed, epoch, dataset index)``, never from a process-wide RNG. An example is met once per epoch, so a run
gives the same numbers whichever process handles it, with any number of processes or accumulation steps, and after
a resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gligen_ext import GroundingEncoders, grounding_adapters, null_grounding, prepare_grounding

from .model import FrozenParts, encode_captions


class UnsupportedPredictionError(ValueError):
    """The noise scheduler predicts something this loss does not handle."""


# the augmentation draws from SeedSequence([seed, epoch, index]); a fourth word gives these draws their own stream
DIFFUSION_STREAM = 1


def example_generators(seed: int, epoch: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per example, seeded from ``(seed, epoch, index)`` (numpy's SeedSequence mixes them)."""
    generators = []
    for index in indices:
        entropy = [seed, epoch, int(index), DIFFUSION_STREAM]
        state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
        generators.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return generators


def per_example_uniform(generators: list[torch.Generator]) -> torch.Tensor:
    """(B,) uniform [0, 1) draws, one from each example's generator."""
    return torch.cat([torch.rand(1, generator=g) for g in generators])


def per_example_normal(generators: list[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """(B, *shape) standard normal draws, one tensor from each example's generator."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


def grounding_inputs(
    unet: nn.Module,
    adapter_name: str,
    layouts: list[dict],
    encoders: GroundingEncoders,
    *,
    drop: torch.Tensor,
    device: torch.device,
) -> dict:
    """``cross_attention_kwargs["gligen"]`` for a batch; samples where ``drop`` (B,) is True get null grounding.

    Every modality of the adapter is always present (nulls where a batch lacks it), so every adapter parameter takes
    part in every step — which distributed data parallel requires — and the token sequence matches inference.
    """
    adapter = grounding_adapters(unet)[adapter_name]
    batch = len(layouts)
    prepared = prepare_grounding(unet, layouts, encoders, device=device, dtype=torch.float32, strict=False)
    prepared = prepared.get(adapter_name, {})
    inputs = {
        modality: prepared.get(modality) or {k: v.to(device) for k, v in tokenizer.null_inputs(batch).items()}
        for modality, tokenizer in adapter.tokenizers.items()
    }
    nulls = null_grounding({adapter_name: inputs})[adapter_name]
    drop = drop.to(device)
    return {
        adapter_name: {
            modality: {
                key: torch.where(drop.view(-1, *[1] * (value.dim() - 1)), nulls[modality][key], value)
                for key, value in tensors.items()
            }
            for modality, tensors in inputs.items()
        }
    }


def encode_latents(vae: nn.Module, pixel_values: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Images (B, 3, R, R) in [-1, 1] -> scaled latents (B, 4, R/f, R/f), sampled with each example's generator."""
    with torch.no_grad():
        distribution = vae.encode(pixel_values.to(vae.dtype)).latent_dist
        eps = per_example_normal(generators, distribution.mean.shape[1:]).to(distribution.mean)
        latents = distribution.mean + distribution.std * eps
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).float()


def denoising_loss(
    parts: FrozenParts,
    unet: nn.Module,
    batch: dict,
    *,
    adapter_name: str,
    encoders: GroundingEncoders,
    generators: list[torch.Generator],
    caption_drop: float,
    grounding_drop: float,
    resolution: int,
    device: torch.device,
) -> torch.Tensor:
    """Mean squared error between the UNet's prediction and its target (noise, or velocity for v-prediction
    schedules) at uniformly drawn timesteps. ``unet`` may be the accelerate-wrapped UNet; ``parts.unet`` is the bare
    one."""
    # the draw order per example is fixed: caption drop, grounding drop, timestep, latent sample, noise
    drop_caption = per_example_uniform(generators) < caption_drop
    drop_grounding = per_example_uniform(generators) < grounding_drop
    steps = parts.noise_scheduler.config.num_train_timesteps
    timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators]).to(device)
    if "latents" in batch:
        latents = batch["latents"].to(device, torch.float32)
    else:
        latents = encode_latents(parts.vae, batch["pixel_values"].to(device), generators)
    noise = per_example_normal(generators, latents.shape[1:]).to(device)

    captions = ["" if drop else caption for caption, drop in zip(batch["captions"], drop_caption.tolist())]
    context, added = encode_captions(parts, captions, resolution=resolution, device=device)
    gligen = grounding_inputs(
        parts.unet, adapter_name, batch["layouts"], encoders, drop=drop_grounding, device=device
    )
    noisy = parts.noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(
        noisy.to(context.dtype),
        timesteps,
        encoder_hidden_states=context,
        added_cond_kwargs=added,
        cross_attention_kwargs={"gligen": gligen},
    ).sample
    return F.mse_loss(prediction.float(), diffusion_target(parts, latents, noise, timesteps))


def diffusion_target(
    parts: FrozenParts, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict, per the scheduler's ``prediction_type``."""
    kind = parts.noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return parts.noise_scheduler.get_velocity(latents, noise, timesteps)
    raise UnsupportedPredictionError(
        f"scheduler prediction_type {kind!r} is not supported; use a base model predicting epsilon or v_prediction"
    )
