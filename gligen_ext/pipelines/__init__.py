"""Grounded diffusers pipelines."""

from .grounding_mixin import GroundingPipelineMixin
from .inpaint import GroundedStableDiffusionInpaintPipeline
from .stable_diffusion import GroundedPipelineOutput, GroundedStableDiffusionPipeline
from .stable_diffusion_xl import GroundedStableDiffusionXLPipeline, GroundedXLPipelineOutput

__all__ = [
    "GroundedPipelineOutput",
    "GroundedStableDiffusionInpaintPipeline",
    "GroundedStableDiffusionPipeline",
    "GroundedStableDiffusionXLPipeline",
    "GroundedXLPipelineOutput",
    "GroundingPipelineMixin",
]
