"""Grounded inpainting keeps everything outside the boxes."""

import numpy as np
import torch
from conftest import open_gates, randomize
from PIL import Image

from gligen_ext import add_grounding_adapter
from gligen_ext.pipelines import GroundedStableDiffusionInpaintPipeline
from gligen_ext.testing import tiny_sd_components


def test_pixels_outside_the_boxes_are_kept(tmp_path):
    pipe = GroundedStableDiffusionInpaintPipeline(**tiny_sd_components(tmp_path / "tok"))
    pipe.set_progress_bar_config(disable=True)
    add_grounding_adapter(pipe.unet, "boxes")
    open_gates(pipe.unet)
    randomize(pipe.unet.position_net)
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    layout = {"boxes": [{"phrase": "a cat", "box": [0.25, 0.25, 0.75, 0.75]}]}
    run = dict(image=source, layout=layout, num_inference_steps=3, output_type="np")
    first = pipe("a cat on a sofa", generator=torch.Generator().manual_seed(0), **run).images[0]
    second = pipe("a cat on a sofa", generator=torch.Generator().manual_seed(0), **run).images[0]
    assert np.array_equal(first, second), "inpainting must be seed-deterministic"
    original = np.asarray(source, dtype=np.float32) / 255
    far = np.ones((64, 64), bool)
    far[12:52, 12:52] = False  # well outside the box [16, 48)
    assert np.abs(first[far] - original[far]).max() < 2 / 255
    inside = np.abs(first[20:44, 20:44] - original[20:44, 20:44]).mean()
    assert inside > 0.05, "the box region is regenerated"
