"""``GroundedStableDiffusionPipeline``: diffusers' ``StableDiffusionPipeline`` plus a ``layout``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import PIL.Image
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput, StableDiffusionSafetyChecker
from diffusers.pipelines.stable_diffusion.clip_image_project_model import CLIPImageProjection
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from .grounding_mixin import Beta, GroundingPipelineMixin


@dataclass
class GroundedPipelineOutput(StableDiffusionPipelineOutput):
    """``images`` as in diffusers, plus ``overlays`` (the layout drawn on each image) when asked for."""

    overlays: list[PIL.Image.Image] | None = None


class GroundedStableDiffusionPipeline(GroundingPipelineMixin, StableDiffusionPipeline):
    """Stable Diffusion that follows a layout: boxes with phrases, image boxes, keypoints and spatial maps.

    Everything ``StableDiffusionPipeline`` does keeps working (``from_pretrained``, ``from_single_file``, any
    scheduler, LoRA, textual inversion, CPU offload, callbacks). Load adapters with :meth:`load_grounding_adapter`.

    Image-grounded boxes embed their reference images with ``image_encoder`` and ``feature_extractor``; the optional
    ``image_project`` (diffusers' ``CLIPImageProjection``, GLIGEN's CLIP text projection ``P``, the component of the
    same name in diffusers' GLIGEN text-image pipelines) maps them into the phrase-embedding space, as GLIGEN's
    text-image checkpoints expect.
    """

    _optional_components = [*StableDiffusionPipeline._optional_components, "image_project"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: StableDiffusionSafetyChecker | None,
        feature_extractor: CLIPImageProcessor | None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        requires_safety_checker: bool = True,
        image_project: CLIPImageProjection | None = None,
    ) -> None:
        super().__init__(
            vae,
            text_encoder,
            tokenizer,
            unet,
            scheduler,
            safety_checker,
            feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        self.register_modules(image_project=image_project)

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *args: Any,
        layout: Any = None,
        grounding_beta: Beta = 0.3,
        return_overlay: bool = False,
        upscaler: Any = None,
        **kwargs: Any,
    ) -> GroundedPipelineOutput | tuple:
        """diffusers' arguments, plus:

        layout: a layout dict (or JSON path, or :class:`~gligen_ext.Layout`) for every prompt, or a list with one
            per prompt. Boxes are normalised to the output image, whatever its size.
        grounding_beta: fraction of the steps with grounding on (GLIGEN's scheduled sampling): a float, or a dict
            ``{modality: fraction}`` whose missing modalities take their GLIGEN default.
        return_overlay: also return the layout drawn over each image (``output.overlays``).
        upscaler: a loaded diffusers upscaler pipeline run on the result with the same prompt (x4 or x2).
        """
        if args:
            raise TypeError("pass pipeline arguments after the prompt by keyword")
        return_dict = kwargs.pop("return_dict", True)
        output, overlays = self.run_grounded(
            super().__call__,
            prompt,
            layout=layout,
            grounding_beta=grounding_beta,
            return_overlay=return_overlay,
            kwargs=kwargs,
            upscaler=upscaler,
        )
        result = GroundedPipelineOutput(output.images, output.nsfw_content_detected, overlays)
        return result if return_dict else (result.images, result.nsfw_content_detected)
