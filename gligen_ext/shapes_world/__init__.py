"""Shapes world: a procedural data set small enough to train and measure grounding on a CPU."""

from .scenes import COLOURS, SHAPES, Scene, Shape, StickFigure, render, sample_scene

__all__ = ["COLOURS", "SHAPES", "Scene", "Shape", "StickFigure", "render", "sample_scene"]
