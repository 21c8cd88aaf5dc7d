"""GroundedStableDiffusionXLPipeline on tiny offline components."""

import pytest
import torch
from conftest import open_gates, randomize
from diffusers import StableDiffusionXLPipeline

from gligen_ext import add_grounding_adapter, available_modalities, get_tokenizer_class
from gligen_ext.pipelines import GroundedStableDiffusionXLPipeline
from gligen_ext.testing import tiny_sdxl_components

ALL = {
    "boxes": [{"phrase": "a red apple", "box": [0.1, 0.1, 0.6, 0.7]}],
    "keypoints": [{"points": [[0.3 + 0.02 * i, 0.2 + 0.03 * i, 2] for i in range(17)]}],
    "depth": torch.linspace(0, 1, 64 * 64).reshape(64, 64),
}


def test_sdxl_every_modality_composed_and_identity_without_layout(tmp_path):
    components = tiny_sdxl_components(tmp_path / "tok")
    base = StableDiffusionXLPipeline(**components)
    base.set_progress_bar_config(disable=True)
    pipe = GroundedStableDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)

    def run(p, **kwargs):
        return p(
            "an apple", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0), **kwargs
        ).images

    reference = run(base)
    adapter = add_grounding_adapter(pipe.unet, ["boxes", "keypoints", "depth"], positive_len=32)
    assert adapter.tokenizers["boxes"].dims.positive_len == pipe.text_encoder_2.config.projection_dim
    open_gates(pipe.unet)
    randomize(pipe.unet.position_net)
    assert (run(pipe) == reference).all()
    assert (run(pipe, layout=ALL, grounding_beta=0.0) == reference).all()
    grounded = run(pipe, layout=ALL, grounding_beta=1.0, width=64, height=96)
    assert grounded.shape == (1, 96, 64, 3)
    assert not (run(pipe, layout=ALL, grounding_beta=1.0) == reference).all()


@pytest.mark.parametrize("modality", available_modalities())
def test_sdxl_each_modality(modality, tmp_path):
    from gligen_ext.testing import tiny_reference_image_encoder

    images = tiny_reference_image_encoder()
    pipe = GroundedStableDiffusionXLPipeline(
        **tiny_sdxl_components(tmp_path / "tok"),
        image_encoder=images.image_encoder,
        feature_extractor=images.image_processor,
    )
    pipe.set_progress_bar_config(disable=True)
    add_grounding_adapter(pipe.unet, modality, positive_len=32)
    open_gates(pipe.unet)
    randomize(pipe.unet.position_net)
    layout = get_tokenizer_class(modality).example_layout()

    def run(beta):
        return pipe(
            "x",
            layout=layout,
            grounding_beta=beta,
            num_inference_steps=2,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images

    assert not (run(1.0) == run(0.0)).all()
