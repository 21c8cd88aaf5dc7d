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


def test_gligen_nine_channel_unet_gets_the_masked_latent_and_keep_mask(tmp_path):
    """GLIGEN's inpainting checkpoints take [noisy latent ; known latent x keep ; keep] with keep = 1 outside boxes."""
    from gligen_ext.testing import tiny_unet

    components = tiny_sd_components(tmp_path / "tok")
    components["unet"] = tiny_unet(in_channels=9)
    pipe = GroundedStableDiffusionInpaintPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    add_grounding_adapter(pipe.unet, "boxes")
    open_gates(pipe.unet)
    randomize(pipe.unet.position_net)
    seen = []
    pipe.unet.conv_in.register_forward_hook(lambda module, args, output: seen.append(args[0].detach().clone()))
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    layout = {"boxes": [{"phrase": "a cat", "box": [0.25, 0.25, 0.75, 0.75]}]}
    image = pipe("a cat", image=source, layout=layout, num_inference_steps=3, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]

    assert len(seen) == 3 and all(x.shape[1] == 9 for x in seen)
    keep = seen[0][:, 8]
    size = keep.shape[-1]
    assert (keep[:, size // 2, size // 2] == 0).all() and (keep[:, 0, 0] == 1).all()
    assert (seen[0][:, 4:8] * (1 - keep[:, None])).abs().max() == 0  # nothing of the known latent inside the boxes
    assert seen[0][:, 4:8].abs().max() > 0
    assert all(torch.equal(x[:, 4:], seen[0][:, 4:]) for x in seen)  # the same condition at every step
    original = np.asarray(source, dtype=np.float32) / 255
    assert np.abs(image[:8] - original[:8]).max() < 2 / 255
