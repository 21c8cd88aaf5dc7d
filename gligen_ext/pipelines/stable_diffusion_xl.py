"""``GroundedStableDiffusionXLPipeline``: diffusers' ``StableDiffusionXLPipeline`` plus a ``layout``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import PIL.Image
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput

from .grounding_mixin import Beta, GroundingPipelineMixin


@dataclass
class GroundedXLPipelineOutput(StableDiffusionXLPipelineOutput):
    """``images`` as in diffusers, plus ``overlays`` when asked for."""

    overlays: list[PIL.Image.Image] | None = None


class GroundedStableDiffusionXLPipeline(GroundingPipelineMixin, StableDiffusionXLPipeline):
    """SDXL that follows a layout. Phrases are embedded with the second text encoder's pooled output
    (``text_embeds``), so adapters for SDXL have ``positive_len`` = ``text_encoder_2.config.projection_dim``."""

    default_guidance_scale = 5.0

    def phrase_text_encoder(self) -> tuple[Any, torch.nn.Module]:
        if self.text_encoder_2 is not None:
            return self.tokenizer_2, self.text_encoder_2
        return self.tokenizer, self.text_encoder

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *args: Any,
        layout: Any = None,
        grounding_beta: Beta = 0.3,
        return_overlay: bool = False,
        upscaler: Any = None,
        **kwargs: Any,
    ) -> GroundedXLPipelineOutput | tuple:
        """diffusers' arguments, plus ``layout``, ``grounding_beta`` and ``return_overlay`` as in
        :class:`~gligen_ext.pipelines.GroundedStableDiffusionPipeline`."""
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
        result = GroundedXLPipelineOutput(output.images, overlays)
        return result if return_dict else (result.images,)
