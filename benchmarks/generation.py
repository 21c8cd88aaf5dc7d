"""Whole generations with classifier-free guidance: grounded ÷ base at β = 0.3 and 1.0, and gligen-ext ÷ diffusers'
``StableDiffusionGLIGENPipeline`` on identical weights (time and peak memory), text encoding and VAE decoding
included."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import torch
from diffusers import StableDiffusionGLIGENPipeline, UNet2DConditionModel

from gligen_ext import adapter_parameters, add_grounding_adapter
from gligen_ext.pipelines import GroundedStableDiffusionPipeline

from .measure import Spread, peak_memory, ratio, time_rounds
from .setups import LAYOUT, PROMPT, Setup

GUIDANCE = 7.5


def diffusers_twin(pipe: GroundedStableDiffusionPipeline, unet_config: dict) -> StableDiffusionGLIGENPipeline:
    """diffusers' GLIGEN text-box pipeline sharing every component of ``pipe``, and a gated UNet holding the same
    base and box-adapter weights as ``pipe.unet`` (built from ``unet_config``)."""
    ours = pipe.unet
    gated = UNet2DConditionModel(**unet_config, attention_type="gated")
    base = {k: v for k, v in ours.state_dict().items() if ".fuser." not in k and not k.startswith("position_net.")}
    gated.load_state_dict(base | dict(adapter_parameters(ours, "default")), strict=True)
    twin = StableDiffusionGLIGENPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
        unet=gated.to(ours.device, ours.dtype).eval(), scheduler=pipe.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    twin.set_progress_bar_config(disable=True)
    return twin


def generation_times(setup: Setup, device: torch.device) -> dict:
    """Seconds per generation of one image (``setup.generation_steps`` DDIM steps, guidance 7.5) for: no layout
    (base), the three-box layout at β = 0.3 and 1.0, and diffusers' GLIGEN pipeline at β = 0.3."""
    size = setup.generation_size
    common = dict(num_inference_steps=setup.generation_steps, guidance_scale=GUIDANCE, height=size, width=size,
                  output_type="np")
    with tempfile.TemporaryDirectory() as folder:
        pipe = GroundedStableDiffusionPipeline(**setup.components(folder)).to(device)
        pipe.set_progress_bar_config(disable=True)
        add_grounding_adapter(pipe.unet, "boxes")
        twin = diffusers_twin(pipe, setup.unet_config)

        def ours(beta: float | None) -> Callable[[], object]:
            layout = None if beta is None else LAYOUT
            return lambda: pipe(PROMPT, layout=layout, grounding_beta=beta or 0.0,
                                generator=torch.Generator().manual_seed(0), **common)

        def theirs(beta: float) -> Callable[[], object]:
            def run() -> object:
                twin.enable_fuser(True)  # diffusers leaves its fusers off after a call with beta < 1
                return twin(PROMPT, gligen_phrases=[b["phrase"] for b in LAYOUT["boxes"]],
                            gligen_boxes=[b["box"] for b in LAYOUT["boxes"]], gligen_scheduled_sampling_beta=beta,
                            generator=torch.Generator().manual_seed(0), **common)
            return run

        variants = {"base": ours(None), "beta 0.3": ours(0.3), "beta 1.0": ours(1.0),
                    "diffusers beta 0.3": theirs(0.3)}
        times = time_rounds(variants, device=device, warmup=setup.warmup, rounds=setup.generation_rounds)
        memory = {name: peak_memory(variants[name], device=device) for name in ("beta 0.3", "diffusers beta 0.3")}
    return {
        "image_size": size,
        "steps": setup.generation_steps,
        "guidance_scale": GUIDANCE,
        "boxes": len(LAYOUT["boxes"]),
        "generation_s": {name: Spread.of(t).as_dict() for name, t in times.items()},
        "grounded_over_base": {
            "beta 0.3": ratio(times, "beta 0.3", "base").as_dict(),
            "beta 1.0": ratio(times, "beta 1.0", "base").as_dict(),
        },
        "versus_diffusers": {
            "time_ratio": ratio(times, "beta 0.3", "diffusers beta 0.3").as_dict(),
            "diffusers_over_base": ratio(times, "diffusers beta 0.3", "base").as_dict(),
            "peak_memory_bytes": {"gligen-ext": memory["beta 0.3"], "diffusers": memory["diffusers beta 0.3"]},
            "memory_ratio": round(memory["beta 0.3"] / max(memory["diffusers beta 0.3"], 1), 4),
        },
    }
