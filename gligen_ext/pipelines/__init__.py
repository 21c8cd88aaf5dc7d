"""Grounded diffusers pipelines."""

from .grounding_mixin import GroundingPipelineMixin
from .stable_diffusion import GroundedPipelineOutput, GroundedStableDiffusionPipeline
from .stable_diffusion_xl import GroundedStableDiffusionXLPipeline, GroundedXLPipelineOutput

__all__ = [
    "GroundedPipelineOutput",
    "GroundedStableDiffusionPipeline",
    "GroundedStableDiffusionXLPipeline",
    "GroundedXLPipelineOutput",
    "GroundingPipelineMixin",
]
