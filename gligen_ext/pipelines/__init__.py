"""Grounded diffusers pipelines."""

from .grounding_mixin import GroundingPipelineMixin
from .stable_diffusion import GroundedPipelineOutput, GroundedStableDiffusionPipeline

__all__ = ["GroundedPipelineOutput", "GroundedStableDiffusionPipeline", "GroundingPipelineMixin"]
