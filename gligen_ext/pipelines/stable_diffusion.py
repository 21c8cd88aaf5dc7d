"""``GroundedStableDiffusionPipeline``: diffusers' ``StableDiffusionPipeline`` plus a ``layout``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import PIL.Image
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

from .grounding_mixin import Beta, GroundingPipelineMixin


@dataclass
class GroundedPipelineOutput(StableDiffusionPipelineOutput):
    """``images`` as in diffusers, plus ``overlays`` (the layout drawn on each image) when asked for."""

    overlays: list[PIL.Image.Image] | None = None


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
