"""GroundedStableDiffusionPipeline on tiny offline components."""

import pytest
import torch
from conftest import open_gates, randomize
from diffusers import StableDiffusionPipeline

from gligen_ext import (
    UnhandledModalityError,
    add_grounding_adapter,
    available_modalities,
    get_tokenizer_class,
    grounding_adapters,
    save_grounding_adapter,
)
from gligen_ext.pipelines import GroundedStableDiffusionPipeline
from gligen_ext.testing import tiny_sd_components, tiny_unet

BOXES = {"boxes": [{"phrase": "a red apple", "box": [0.1, 0.1, 0.6, 0.7]}]}
ALL = BOXES | {
    "keypoints": [{"points": [[0.3 + 0.02 * i, 0.2 + 0.03 * i, 2] for i in range(17)]}],
    "depth": torch.linspace(0, 1, 64 * 64).reshape(64, 64),
}


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    unet = tiny_unet()
    add_grounding_adapter(unet, ["boxes", "keypoints", "depth"])
    open_gates(unet)
    randomize(unet.position_net)
    return save_grounding_adapter(unet, tmp_path_factory.mktemp("adapter") / "multi.safetensors")


@pytest.fixture
def pipe(tmp_path, adapter_file):
    pipe = GroundedStableDiffusionPipeline(**tiny_sd_components(tmp_path / "tok"))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_grounding_adapter(adapter_file)
    return pipe


def generate(pipe, **kwargs):
    defaults = dict(prompt="an apple", num_inference_steps=2, guidance_scale=6.0, output_type="np")
    return pipe(generator=torch.Generator().manual_seed(0), **(defaults | kwargs)).images


def test_no_layout_and_zero_beta_equal_the_base_pipeline(pipe, tmp_path):
    base_pipe = StableDiffusionPipeline(**{k: v for k, v in pipe.components.items() if k != "image_project"})
    adapters = dict(grounding_adapters(pipe.unet))
    reference = generate(pipe)
    assert (generate(pipe, layout=ALL, grounding_beta=0.0) == reference).all()
    grounded = generate(pipe, layout=ALL, grounding_beta=1.0)
    assert not (grounded == reference).all()
    # the pipeline restores every adapter's beta after the call (diffusers' GLIGEN pipeline leaves fusers off)
    assert all(adapter.beta == 1.0 for adapter in adapters.values())
    pipe.unload_grounding_adapters()
    assert (generate(base_pipe) == reference).all()


@pytest.mark.parametrize("beta, steps_on", [(0.0, 0), (0.5, 2), (1.0, 4)])
def test_scheduled_sampling_turns_grounding_off_after_beta_steps(pipe, beta, steps_on):
    calls = []
    handle = pipe.unet.position_net.register_forward_hook(lambda module, args, out: calls.append(bool(out)))
    generate(pipe, layout=BOXES, grounding_beta=beta, num_inference_steps=4)
    handle.remove()
    assert sum(calls) == steps_on


@pytest.mark.parametrize("guidance_scale", [1.0, 6.0])
def test_batch_prompts_each_with_its_layout_and_several_images(pipe, guidance_scale):
    layouts = [BOXES, ALL]
    images = generate(
        pipe,
        prompt=["an apple", "a person"],
        layout=layouts,
        num_images_per_prompt=2,
        guidance_scale=guidance_scale,
        grounding_beta=1.0,
    )
    assert images.shape == (4, 64, 64, 3)
    # the second prompt's layout reaches exactly the second prompt's images
    first_only = generate(
        pipe,
        prompt=["an apple", "a person"],
        layout=[BOXES, BOXES],
        num_images_per_prompt=2,
        guidance_scale=guidance_scale,
        grounding_beta=1.0,
    )
    assert (images[:2] == first_only[:2]).all() and not (images[2:] == first_only[2:]).all()


def test_non_square_output(pipe):
    assert generate(pipe, layout=ALL, width=96, height=64).shape == (1, 64, 96, 3)


def test_unhandled_modality_is_a_clear_error(tmp_path):
    unet = tiny_unet()
    add_grounding_adapter(unet, "boxes")
    pipe = GroundedStableDiffusionPipeline(**{**tiny_sd_components(tmp_path / "tok"), "unet": unet})
    with pytest.raises(UnhandledModalityError, match="keypoints given, but no loaded grounding adapter handles it"):
        generate(pipe, layout=ALL | {"depth": None})


def test_user_callback_and_kwargs_survive(pipe):
    seen, user_kwargs = [], {"scale": 1.0}

    def callback(p, step, timestep, callback_kwargs):
        seen.append(step)
        return callback_kwargs

    generate(pipe, layout=BOXES, callback_on_step_end=callback, cross_attention_kwargs=user_kwargs)
    assert seen == [0, 1] and user_kwargs == {"scale": 1.0}


def test_overlay_returned(pipe):
    output = pipe(
        "an apple", layout=ALL, num_inference_steps=1, return_overlay=True, generator=torch.Generator().manual_seed(0)
    )
    assert len(output.overlays) == 1 and output.overlays[0].width > output.images[0].width


def test_save_and_reload_pipeline_then_adapter(pipe, tmp_path, adapter_file):
    pipe.unload_grounding_adapters()
    pipe.save_pretrained(tmp_path / "pipe")
    reloaded = GroundedStableDiffusionPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True)
    reloaded.set_progress_bar_config(disable=True)
    reloaded.load_grounding_adapter(adapter_file, adapter_name="multi")
    pipe.load_grounding_adapter(adapter_file, adapter_name="multi")
    assert (generate(reloaded, layout=ALL) == generate(pipe, layout=ALL)).all()


def test_style_lora_together_with_grounding_adapter(pipe, tmp_path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = tiny_unet()
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in donor.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(donor))

    grounded = generate(pipe, layout=ALL, grounding_beta=1.0)
    pipe.load_lora_weights(tmp_path / "lora", adapter_name="style")
    wrapped = [name for name, module in pipe.unet.named_modules() if hasattr(module, "lora_A")]
    assert wrapped and not any(".fuser." in name for name in wrapped), "a style LoRA must not wrap gated layers"
    styled = generate(pipe, layout=ALL, grounding_beta=1.0)
    assert not (styled == grounded).all()
    assert not (styled == generate(pipe, layout=ALL, grounding_beta=0.0)).all(), "grounding still acts with a LoRA"
    pipe.unload_lora_weights()
    assert (generate(pipe, layout=ALL, grounding_beta=1.0) == grounded).all()


def test_upscaler_stage_scales_images_and_overlays(pipe, tmp_path):
    from gligen_ext.testing import tiny_upscaler

    upscaler = tiny_upscaler(tmp_path / "up_tok")
    upscaler.set_progress_bar_config(disable=True)
    output = pipe(
        ["an apple", "a person"],
        layout=BOXES,
        num_inference_steps=2,
        upscaler=upscaler,
        return_overlay=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert [image.size for image in output.images] == [(256, 256)] * 2
    assert output.overlays[0].size == (256, 256)


@pytest.mark.parametrize("modality", available_modalities())
def test_every_registered_modality_through_the_pipeline(modality, tmp_path):
    from gligen_ext.testing import tiny_reference_image_encoder

    images = tiny_reference_image_encoder()
    components = tiny_sd_components(tmp_path / "tok")
    pipe = GroundedStableDiffusionPipeline(
        **{**components, "image_encoder": images.image_encoder, "feature_extractor": images.image_processor}
    )
    pipe.set_progress_bar_config(disable=True)
    reference = generate(pipe)
    add_grounding_adapter(pipe.unet, modality)
    open_gates(pipe.unet)
    randomize(pipe.unet.position_net)
    layout = get_tokenizer_class(modality).example_layout()
    assert (generate(pipe, layout=layout, grounding_beta=0.0) == reference).all()
    assert not (generate(pipe, layout=layout, grounding_beta=1.0) == reference).all()


def test_textual_inversion_with_grounding(pipe):
    grounded = generate(pipe, prompt="a <toy> apple", layout=BOXES, grounding_beta=1.0)
    pipe.load_textual_inversion({"<toy>": torch.randn(32, generator=torch.Generator().manual_seed(1))}, token="<toy>")
    assert not (generate(pipe, prompt="a <toy> apple", layout=BOXES, grounding_beta=1.0) == grounded).all()
