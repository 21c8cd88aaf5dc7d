"""The GPU section (``--device cuda`` only): attention backends, half precisions, and 512² 50-step generations.

* xformers ÷ SDPA ÷ plain (eager) attention, per grounded step and in peak memory; the gated layers run on the same
  backend as the base UNet (``set_attn_processor`` reaches them, they are diffusers ``Attention`` modules);
* fp32, fp16 and bf16: per-step time with and without grounding;
* one 512² 50-step generation with classifier-free guidance in fp16 on the best backend, with and without
  grounding: seconds and peak VRAM.

Backends and precisions cannot share one UNet at once, so they are timed one after another (a GPU drifts far less
than a shared CPU); grounded and base steps within a precision are interleaved as everywhere else.
"""

from __future__ import annotations

import tempfile

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor

from gligen_ext import add_grounding_adapter, enable_best_attention
from gligen_ext.attention import xformers_available
from gligen_ext.pipelines import GroundedStableDiffusionPipeline

from .measure import Spread, peak_memory, ratio, time_rounds
from .setups import LAYOUT, PROMPT, Setup, all_slots_on
from .unet_steps import unet_call, unet_inputs

PROCESSORS = {"sdpa": AttnProcessor2_0, "xformers": XFormersAttnProcessor, "plain": AttnProcessor}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def attention_backends(setup: Setup, device: torch.device, dtype: torch.dtype = torch.float16) -> dict:
    """Grounded (boxes) step time and peak memory per attention backend, and each ÷ SDPA."""
    unet = setup.unet().to(device, dtype)
    adapter = add_grounding_adapter(unet, "boxes")
    inputs = unet_inputs(unet, batch=setup.step_batch, latent_size=setup.step_size // setup.latent_factor,
                         device=device, dtype=dtype)
    step = unet_call(unet, inputs, {"default": all_slots_on(adapter, setup.step_batch, device=device, dtype=dtype)})
    results: dict = {}
    for name, processor in PROCESSORS.items():
        if name == "xformers" and not (device.type == "cuda" and xformers_available()):
            results[name] = {"skipped": "xformers is not installed" if device.type == "cuda" else "needs CUDA"}
            continue
        try:
            unet.set_attn_processor(processor())
            times = time_rounds({name: step}, device=device, warmup=setup.warmup, rounds=setup.rounds)[name]
            memory = peak_memory(step, device=device)
            results[name] = {"step_s": Spread.of(times).as_dict(), "peak_memory_bytes": memory}
        except Exception as error:  # an xformers wheel built for another CUDA fails only when used
            results[name] = {"skipped": f"{type(error).__name__}: {error}"[:300]}
    sdpa = results["sdpa"]
    for row in results.values():
        if "step_s" in row:
            row["time_over_sdpa"] = round(row["step_s"]["median"] / sdpa["step_s"]["median"], 4)
            row["memory_over_sdpa"] = round(row["peak_memory_bytes"] / max(sdpa["peak_memory_bytes"], 1), 4)
    return {"dtype": str(dtype).removeprefix("torch."), "image_size": setup.step_size, "batch": setup.step_batch,
            "backends": results}


def precisions(setup: Setup, device: torch.device) -> dict:
    """Per precision: base and grounded (boxes) step time, their ratio, and the precision's speed-up over fp32."""
    unet = setup.unet().to(device)
    adapter = add_grounding_adapter(unet, "boxes")
    enable_best_attention(unet)
    results: dict = {}
    for name, dtype in DTYPES.items():
        unet.to(dtype)
        inputs = unet_inputs(unet, batch=setup.step_batch, latent_size=setup.step_size // setup.latent_factor,
                             device=device, dtype=dtype)
        gligen = {"default": all_slots_on(adapter, setup.step_batch, device=device, dtype=dtype)}
        times = time_rounds({"base": unet_call(unet, inputs, None), "grounded": unet_call(unet, inputs, gligen)},
                            device=device, warmup=setup.warmup, rounds=setup.rounds)
        results[name] = {"base_step_s": Spread.of(times["base"]).as_dict(),
                         "grounded_step_s": Spread.of(times["grounded"]).as_dict(),
                         "grounded_over_base": ratio(times, "grounded", "base").as_dict()}
    for row in results.values():
        row["speedup_over_fp32"] = round(results["fp32"]["grounded_step_s"]["median"]
                                         / row["grounded_step_s"]["median"], 3)
    return {"image_size": setup.step_size, "batch": setup.step_batch, "precisions": results}


def generation(setup: Setup, device: torch.device, *, steps: int = 50, dtype: torch.dtype = torch.float16) -> dict:
    """A 50-step generation at the setup's generation size (512² on CUDA), fp16: with and without grounding."""
    size = setup.generation_size
    with tempfile.TemporaryDirectory() as folder:
        pipe = GroundedStableDiffusionPipeline(**setup.components(folder)).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    add_grounding_adapter(pipe.unet, "boxes")
    backend = enable_best_attention(pipe.unet)
    common = dict(num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="np")

    def run(layout: dict | None, beta: float) -> object:
        return lambda: pipe(PROMPT, layout=layout, grounding_beta=beta, generator=torch.Generator().manual_seed(0),
                            **common)

    variants = {"base": run(None, 0.0), "beta 0.3": run(LAYOUT, 0.3), "beta 1.0": run(LAYOUT, 1.0)}
    times = time_rounds(variants, device=device, warmup=1, rounds=setup.generation_rounds)
    return {
        "image_size": size, "steps": steps, "dtype": str(dtype).removeprefix("torch."), "attention": backend,
        "generation_s": {name: Spread.of(t).as_dict() for name, t in times.items()},
        "grounded_over_base": {name: ratio(times, name, "base").as_dict() for name in ("beta 0.3", "beta 1.0")},
        "peak_memory_bytes": {name: peak_memory(fn, device=device) for name, fn in variants.items()},
    }


def cuda_section(setup: Setup, device: torch.device) -> dict:
    """Everything above, with the GPU's name."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    return {"device_name": name, "attention_backends": attention_backends(setup, device),
            "precisions": precisions(setup, device), "generation": generation(setup, device)}
