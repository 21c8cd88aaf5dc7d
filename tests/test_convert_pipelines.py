"""Converted diffusers GLIGEN weights in gligen-ext's pipeline give diffusers' own GLIGEN pipelines' images.

diffusers' (deprecated) pipelines get the gated UNet; gligen-ext's gets a plain UNet with the same base weights plus
the adapter converted from that gated UNet. Same components, seed, scheduler, boxes and beta.
"""

import warnings

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from gligen_checkpoints import randomize_all
from PIL import Image

from gligen_ext.convert import convert_checkpoint, save_converted
from gligen_ext.pipelines import GroundedStableDiffusionPipeline
from gligen_ext.testing import tiny_reference_image_encoder, tiny_sd_components, tiny_unet, tiny_unet_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers import StableDiffusionGLIGENPipeline, StableDiffusionGLIGENTextImagePipeline

PHRASES = ["a red apple", "a blue cup"]
BOXES = [[0.1, 0.2, 0.55, 0.8], [0.5, 0.3, 0.9, 0.7]]
RUN = dict(prompt="an apple and a cup", num_inference_steps=4, guidance_scale=6.0)


def converted_pair(tmp_path, attention_type):
    """(diffusers' gated UNet with every weight random, a plain UNet with its base weights + the converted adapter)."""
    gated = UNet2DConditionModel(**tiny_unet_config(), attention_type=attention_type).eval()
    randomize_all(gated, seed=3)
    gated.save_pretrained(tmp_path / "gated")
    adapter = save_converted(convert_checkpoint(tmp_path / "gated"), tmp_path / "adapter.safetensors")[0]
    plain = tiny_unet()
    base = {k: v for k, v in gated.state_dict().items() if ".fuser." not in k and not k.startswith("position_net.")}
    plain.load_state_dict(base)
    return gated, plain, adapter


def run(pipe, **kwargs):
    """(final latents, images) of one generation: latents show differences the tiny VAE would shrink."""
    pipe.set_progress_bar_config(disable=True)
    latents = []
    if isinstance(pipe, GroundedStableDiffusionPipeline):
        kwargs["callback_on_step_end"] = lambda p, i, t, tensors: latents.append(tensors["latents"]) or tensors
    else:  # diffusers' deprecated GLIGEN pipelines only have the legacy callback
        kwargs |= {"callback": lambda i, t, step_latents: latents.append(step_latents), "callback_steps": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        images = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **(RUN | kwargs)).images
    return latents[-1].numpy(), images


def assert_close(got, expected, tolerance=1e-4):
    for ours, theirs in zip(got, expected):
        assert np.abs(ours - theirs).max() < tolerance


def test_text_box_pipeline_matches_diffusers(tmp_path, beta=0.5):
    """beta 0.5 of 4 steps: grounded steps, the cutoff and ungrounded steps must all agree."""
    components = tiny_sd_components(tmp_path / "tok")
    gated, plain, adapter = converted_pair(tmp_path, "gated")
    theirs = StableDiffusionGLIGENPipeline(**{**components, "unet": gated})
    ours = GroundedStableDiffusionPipeline(**{**components, "unet": plain})
    ours.load_grounding_adapter(adapter)
    expected = run(theirs, gligen_phrases=PHRASES, gligen_boxes=BOXES, gligen_scheduled_sampling_beta=beta)
    layout = {"boxes": [{"phrase": p, "box": b} for p, b in zip(PHRASES, BOXES)]}
    got = run(ours, layout=layout, grounding_beta=beta)
    assert_close(got, expected)
    ungrounded = run(ours, layout=layout, grounding_beta=0.0)
    assert np.abs(got[0] - ungrounded[0]).max() > 1e-2, "grounding must change the result clearly"


def test_text_image_box_pipeline_matches_diffusers(tmp_path):
    """diffusers' text-image pipeline grounds every step (its beta is ignored) and takes the unconditional half of
    classifier-free guidance from a pass with null grounding, as gligen-ext's CFG does."""
    components = tiny_sd_components(tmp_path / "tok")
    images = tiny_reference_image_encoder()
    gated, plain, adapter = converted_pair(tmp_path, "gated-text-image")
    from transformers import CLIPProcessor

    theirs = StableDiffusionGLIGENTextImagePipeline(
        **{**components, "unet": gated},
        processor=CLIPProcessor(image_processor=images.image_processor, tokenizer=components["tokenizer"]),
        image_encoder=images.image_encoder,
        image_project=images.image_projection,
    )
    ours = GroundedStableDiffusionPipeline(
        **{**components, "unet": plain, "feature_extractor": images.image_processor},
        image_encoder=images.image_encoder,
        image_project=images.image_projection,
    )
    ours.load_grounding_adapter(adapter)
    reference = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    expected = run(theirs, gligen_phrases=[PHRASES[0], None], gligen_images=[None, reference], gligen_boxes=BOXES)
    layout = {"boxes": [{"phrase": PHRASES[0], "box": BOXES[0]}, {"image": reference, "box": BOXES[1]}]}
    got = run(ours, layout=layout, grounding_beta=1.0)
    assert_close(got, expected)
    # the image embedding is GLIGEN's: CLIP image_embeds, projected, rescaled to norm 28.7
    theirs_embedding = theirs.get_clip_feature(reference, 28.7, "cpu", is_image=True)
    assert torch.allclose(ours.grounding_encoders().encode_images([reference]), theirs_embedding, atol=1e-4)
    ours.image_project = None
    assert not torch.allclose(ours.grounding_encoders().encode_images([reference]), theirs_embedding, atol=1e-2)
