"""``GroundedStableDiffusionPipeline``: diffusers' ``StableDiffusionPipeline`` plus a ``layout``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import PIL.Image
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

from .grounding_mixin import Beta, GroundingPipelineMixin, callback_tensor_inputs, merged_cross_attention_kwargs


@dataclass
class GroundedPipelineOutput(StableDiffusionPipelineOutput):
    """``images`` as in diffusers, plus ``overlays`` (the layout drawn on each image) when asked for."""

    overlays: list[PIL.Image.Image] | None = None


def prompt_batch_size(prompt: Any, prompt_embeds: Any) -> int:
    if isinstance(prompt, str):
        return 1
    if isinstance(prompt, list):
        return len(prompt)
    return prompt_embeds.shape[0]


def overlays_for(output: Any, layouts: list, return_overlay: bool) -> list[PIL.Image.Image] | None:
    if not return_overlay:
        return None
    from ..viz import overlay_layout

    if not output.images or not isinstance(output.images[0], PIL.Image.Image):
        raise ValueError("return_overlay=True needs output_type='pil'")
    layouts = layouts or [None] * len(output.images)
    return [overlay_layout(image, layout) for image, layout in zip(output.images, layouts)]


class GroundedStableDiffusionPipeline(GroundingPipelineMixin, StableDiffusionPipeline):
    """Stable Diffusion that follows a layout: boxes with phrases, image boxes, keypoints and spatial maps.

    Everything ``StableDiffusionPipeline`` does keeps working (``from_pretrained``, ``from_single_file``, any
    scheduler, LoRA, textual inversion, CPU offload, callbacks). Load adapters with :meth:`load_grounding_adapter`.
    """

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *args: Any,
        layout: Any = None,
        grounding_beta: Beta = 0.3,
        return_overlay: bool = False,
        **kwargs: Any,
    ) -> GroundedPipelineOutput | tuple:
        """diffusers' arguments, plus:

        layout: a layout dict (or JSON path, or :class:`~gligen_ext.Layout`) for every prompt, or a list with one
            per prompt. Boxes are normalised to the output image, whatever its size.
        grounding_beta: fraction of the steps with grounding on (GLIGEN's scheduled sampling): a float, or a dict
            ``{modality: fraction}`` whose missing modalities take their GLIGEN default.
        return_overlay: also return the layout drawn over each image (``output.overlays``).
        """
        if args:
            raise TypeError("pass pipeline arguments after the prompt by keyword")
        height = kwargs.get("height") or self.unet.config.sample_size * self.vae_scale_factor
        width = kwargs.get("width") or self.unet.config.sample_size * self.vae_scale_factor
        self._guidance_scale = kwargs.get("guidance_scale", 7.5)
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
        return_dict = kwargs.pop("return_dict", True)
        steps = kwargs.get("num_inference_steps", 50)
        with self.scheduled_grounding(gligen, grounding_beta, steps, callback) as step_end:
            output = super().__call__(prompt, callback_on_step_end=step_end, return_dict=True, **kwargs)
        result = GroundedPipelineOutput(
            images=output.images,
            nsfw_content_detected=output.nsfw_content_detected,
            overlays=overlays_for(output, layouts, return_overlay),
        )
        return result if return_dict else (result.images, result.nsfw_content_detected)
