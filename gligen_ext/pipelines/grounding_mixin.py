"""What every grounded pipeline adds to its diffusers parent: adapter management and the per-call grounding set-up.

The parent's ``__call__`` stays in charge of the denoising loop. This mixin prepares grounding inputs once per call,
doubles them for classifier-free guidance (the unconditional half gets the null grounding, as GLIGEN does), passes
them through ``cross_attention_kwargs["gligen"]``, and switches each adapter off after its scheduled-sampling
fraction of steps with a ``callback_on_step_end``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

from ..adapters import load_grounding_adapter
from ..encoders import PhraseEncoder, ReferenceImageEncoder
from ..grounding import concat_grounding, null_grounding, prepare_grounding
from ..inject import grounding_adapters, set_grounding_scale, unload_grounding_adapters
from ..layout import Layout, parse_layouts
from ..lora import unload_adapter_lora
from ..lora_files import load_adapter_lora
from ..tokenizers import GroundingEncoders

Beta = float | dict[str, float]


class GroundingPipelineMixin:
    """Adds ``load_grounding_adapter``, ``load_grounding_lora``, ``set_grounding_adapters`` and
    ``unload_grounding_adapters``."""

    default_guidance_scale = 7.5  # the parent pipeline's own default

    def load_grounding_adapter(
        self, path_or_hub_id: str | os.PathLike, adapter_name: str | None = None, weight: float = 1.0, **kwargs: Any
    ) -> str:
        """Load a gligen-ext adapter file (path, folder or hub id) into ``self.unet``; returns its name."""
        return load_grounding_adapter(self.unet, path_or_hub_id, adapter_name=adapter_name, weight=weight, **kwargs)

    def load_grounding_lora(self, path: str | os.PathLike, adapter_name: str | None = None, **kwargs: Any) -> str:
        """Load a grounding-LoRA file on top of its parent adapter (load that first); returns the adapter's name."""
        return load_adapter_lora(self.unet, path, adapter_name=adapter_name, **kwargs)

    def unload_grounding_lora(self, adapter_name: str = "default") -> None:
        """Remove the LoRA from ``adapter_name``; the adapter is exactly as loaded."""
        unload_adapter_lora(self.unet, adapter_name)

    def set_grounding_adapters(
        self, names: str | Sequence[str], weights: float | Sequence[float] | None = None
    ) -> None:
        """Use only ``names`` (others are disabled), each with its weight (default 1.0)."""
        names = [names] if isinstance(names, str) else list(names)
        weights = [1.0] * len(names) if weights is None else weights
        weights = [weights] * len(names) if isinstance(weights, (int, float)) else list(weights)
        if len(weights) != len(names):
            raise ValueError(f"set_grounding_adapters: {len(names)} names but {len(weights)} weights")
        loaded = grounding_adapters(self.unet)
        for name in loaded:
            set_grounding_scale(self.unet, name, enabled=False)
        for name, weight in zip(names, weights):
            set_grounding_scale(self.unet, name, weight=weight, enabled=True)

    def unload_grounding_adapters(self) -> None:
        """Remove every grounding adapter; the UNet is exactly the base again."""
        unload_grounding_adapters(self.unet)

    def grounding_encoders(self) -> GroundingEncoders:
        """Phrase encoder from the pipeline's (last) text encoder; image encoder (with the optional
        ``image_project`` projection) when the pipeline has one."""
        tokenizer, text_encoder = self.phrase_text_encoder()
        image_encoder = getattr(self, "image_encoder", None)
        processor = getattr(self, "feature_extractor", None)
        projection = getattr(self, "image_project", None)
        encode_images = (
            ReferenceImageEncoder(image_encoder, processor, projection) if image_encoder and processor else None
        )
        return GroundingEncoders(encode_phrases=PhraseEncoder(tokenizer, text_encoder), encode_images=encode_images)

    def phrase_text_encoder(self) -> tuple[Any, torch.nn.Module]:
        """The tokenizer and text encoder whose pooled output embeds box phrases."""
        return self.tokenizer, self.text_encoder

    def run_grounded(
        self,
        parent_call: Any,
        prompt: Any,
        *,
        layout: Any,
        grounding_beta: Beta,
        return_overlay: bool,
        kwargs: dict,
        upscaler: Any = None,
    ) -> tuple[Any, list[PIL.Image.Image] | None]:
        """Run the diffusers parent's ``__call__`` with grounding; returns (parent output, overlays or None).

        ``upscaler``: an optional loaded diffusers upscaler (``StableDiffusionUpscalePipeline`` x4 or
        ``StableDiffusionLatentUpscalePipeline`` x2) run on the grounded result with the same prompt, Imagen's
        cascade applied to SD. Overlays are drawn on the upscaled images (layouts are normalised, so they scale).
        """
        default_size = self.unet.config.sample_size * self.vae_scale_factor
        height, width = kwargs.get("height") or default_size, kwargs.get("width") or default_size
        # the parent's do_classifier_free_guidance reads this before its own __call__ sets it
        self._guidance_scale = kwargs.get("guidance_scale", self.default_guidance_scale)
        gligen, layouts = self.grounding_for_call(
            layout,
            batch_size=prompt_batch_size(prompt, kwargs.get("prompt_embeds")),
            num_images_per_prompt=kwargs.get("num_images_per_prompt") or 1,
            width=width,
            height=height,
            cfg=self.do_classifier_free_guidance,
        )
        callback = kwargs.pop("callback_on_step_end", None)
        kwargs["callback_on_step_end_tensor_inputs"] = callback_tensor_inputs(
            callback, kwargs.get("callback_on_step_end_tensor_inputs", ["latents"])
        )
        kwargs["cross_attention_kwargs"] = merged_cross_attention_kwargs(kwargs.get("cross_attention_kwargs"), gligen)
        kwargs["return_dict"] = True
        steps = len(kwargs["timesteps"]) if kwargs.get("timesteps") else kwargs.get("num_inference_steps", 50)
        with self.scheduled_grounding(gligen, grounding_beta, steps, callback) as step_end:
            output = parent_call(prompt, callback_on_step_end=step_end, **kwargs)
        if upscaler is not None:
            output.images = upscale(upscaler, output.images, prompt, kwargs)
        return output, overlays_for(output.images, layouts) if return_overlay else None

    def grounding_for_call(
        self, layout: Any, *, batch_size: int, num_images_per_prompt: int, width: int, height: int, cfg: bool
    ) -> tuple[dict | None, list[Layout]]:
        """(``gligen`` inputs or None, one parsed layout per generated image)."""
        if layout is None or not grounding_adapters(self.unet):
            if layout is not None:
                parse_layouts(layout, batch_size=batch_size, width=width, height=height)  # still validate it
                raise ValueError("layout given but no grounding adapter is loaded; call load_grounding_adapter first")
            return None, []
        layouts = parse_layouts(layout, batch_size=batch_size, width=width, height=height)
        layouts = [item for item in layouts for _ in range(num_images_per_prompt)]
        if all(item.is_empty() for item in layouts):
            return None, layouts
        parameter = next(self.unet.parameters())
        inputs = prepare_grounding(
            self.unet, layouts, self.grounding_encoders(), device=self._execution_device, dtype=parameter.dtype
        )
        return (concat_grounding(null_grounding(inputs), inputs) if cfg else inputs), layouts

    @contextmanager
    def scheduled_grounding(self, gligen: dict | None, grounding_beta: Beta, num_steps: int, callback: Any):
        """Yield the step callback that turns each adapter off after ``int(beta * steps)`` steps; restore after."""
        saved = {name: adapter.beta for name, adapter in grounding_adapters(self.unet).items()}
        cutoffs = (
            {
                name: int(_adapter_beta(adapter, grounding_beta) * num_steps)
                for name, adapter in grounding_adapters(self.unet).items()
            }
            if gligen
            else {}
        )
        for name, cutoff in cutoffs.items():
            set_grounding_scale(self.unet, name, beta=1.0 if cutoff > 0 else 0.0)

        def step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            for name, cutoff in cutoffs.items():
                # once per adapter, at its cutoff step (a cutoff of 0 was applied before the first step)
                if step + 1 == cutoff:
                    set_grounding_scale(self.unet, name, beta=0.0)
            return callback(pipe, step, timestep, callback_kwargs) if callback is not None else callback_kwargs

        try:
            yield step_end
        finally:
            for name, beta in saved.items():
                set_grounding_scale(self.unet, name, beta=beta)


def _adapter_beta(adapter: Any, grounding_beta: Beta) -> float:
    """An adapter's fraction of grounded steps: the float, or the largest of its modalities' entries in the dict."""
    if isinstance(grounding_beta, dict):
        beta = max(grounding_beta.get(m, t.default_beta) for m, t in adapter.tokenizers.items())
    else:
        beta = float(grounding_beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"grounding_beta must lie in [0, 1] (a fraction of the denoising steps), got {beta}")
    return beta


def prompt_batch_size(prompt: Any, prompt_embeds: Any) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    if prompt_embeds is None:
        raise ValueError("give a prompt or prompt_embeds")
    return prompt_embeds.shape[0]


def overlays_for(images: Any, layouts: list[Layout]) -> list[PIL.Image.Image]:
    """The layout drawn over each generated image."""
    from ..viz import overlay_layout

    if not images or not isinstance(images[0], PIL.Image.Image):
        raise ValueError("return_overlay=True needs output_type='pil'")
    layouts = layouts or [Layout()] * len(images)
    return [overlay_layout(image, layout) for image, layout in zip(images, layouts)]


def upscale(upscaler: Any, images: Any, prompt: Any, kwargs: dict) -> list[PIL.Image.Image]:
    """Run ``upscaler`` on the generated images, one prompt per image."""
    if not images or not isinstance(images[0], PIL.Image.Image):
        raise ValueError("upscaler= needs output_type='pil'")
    per_prompt = len(images) // (1 if isinstance(prompt, str) or prompt is None else len(prompt))
    prompts = [prompt] * len(images) if isinstance(prompt, str) else [p for p in prompt for _ in range(per_prompt)]
    return upscaler(
        prompt=prompts,
        image=list(images),
        num_inference_steps=kwargs.get("num_inference_steps", 50),
        generator=kwargs.get("generator"),
        output_type="pil",
    ).images


def callback_tensor_inputs(callback: Any, requested: list[str]) -> list[str]:
    """diffusers' rule: a ``PipelineCallback`` object declares the tensors it needs."""
    if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
        return callback.tensor_inputs
    return requested


def merged_cross_attention_kwargs(user: dict | None, gligen: dict | None) -> dict | None:
    """The caller's kwargs plus ``gligen``, without mutating the caller's dict."""
    if gligen is None:
        return user
    return {**(user or {}), "gligen": gligen}
