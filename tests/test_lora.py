"""LoRA fine-tuning of a loaded grounding adapter: identity at init, frozen parent, files, merge, unload, errors."""

import json
import logging

import pytest
import torch
from conftest import open_gates, randomize
from safetensors import safe_open

from gligen_ext import (
    AdapterFileError,
    GroundingAdapterError,
    GroundingLoraError,
    LoraParentMismatchError,
    adapter_lora_parameters,
    adapter_parameters,
    add_adapter_lora,
    add_grounding_adapter,
    load_adapter_lora,
    load_grounding_adapter,
    merge_adapter_lora,
    prepare_grounding,
    read_adapter_config,
    read_lora_config,
    save_adapter_lora,
    save_grounding_adapter,
    unload_adapter_lora,
)
from gligen_ext.testing import tiny_unet

LAYOUT = {"boxes": [{"phrase": "a cat", "box": [0.1, 0.2, 0.6, 0.9]}, {"phrase": "a dog", "box": [0.5, 0.1, 1, 0.5]}]}


@pytest.fixture(scope="module")
def parent_file(tmp_path_factory):
    """A parent adapter with open gates and random weights, so that a LoRA on it has a visible effect."""
    unet = tiny_unet()
    add_grounding_adapter(unet, "boxes")
    randomize(unet.position_net)
    for name, module in unet.named_modules():
        if name.endswith("fuser"):
            randomize(module, seed=1)
    open_gates(unet, 0.7)
    return save_grounding_adapter(unet, tmp_path_factory.mktemp("parent") / "boxes.safetensors")


@pytest.fixture
def grounded(parent_file):
    unet = tiny_unet()
    load_grounding_adapter(unet, parent_file)
    return unet


def run(unet, unet_inputs, encoders):
    sample, timestep, context = unet_inputs
    gligen = prepare_grounding(unet, LAYOUT, encoders, batch_size=2)
    with torch.no_grad():
        return unet(sample, timestep, context, cross_attention_kwargs={"gligen": gligen}).sample


def snapshot(module):
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def tune(unet, params, unet_inputs, encoders, steps=3):
    """A few Adam steps on a toy objective (push the noise prediction towards zero)."""
    sample, timestep, context = unet_inputs
    gligen = prepare_grounding(unet, LAYOUT, encoders, batch_size=2)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        loss = unet(sample, timestep, context, cross_attention_kwargs={"gligen": gligen}).sample.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("position_net", [False, True])
def test_fresh_lora_is_identity_and_only_its_factors_train(grounded, unet_inputs, encoders, position_net):
    reference = run(grounded, unet_inputs, encoders)
    keys = set(adapter_parameters(grounded, "default"))
    params = add_adapter_lora(grounded, rank=4, position_net=position_net)
    assert torch.equal(run(grounded, unet_inputs, encoders), reference)
    assert {id(p) for p in grounded.parameters() if p.requires_grad} == {id(p) for p in params}
    assert set(adapter_parameters(grounded, "default")) == keys, "parent keys stay the plain adapter keys"
    tokenizer_factors = [n for n, p in grounded.named_parameters() if "lora_" in n and "position_net" in n]
    assert bool(tokenizer_factors) == position_net


def test_training_changes_only_the_lora(grounded, unet_inputs, encoders):
    before = snapshot(grounded)
    reference = run(grounded, unet_inputs, encoders)
    params = add_adapter_lora(grounded, rank=4, position_net=True)
    tune(grounded, params, unet_inputs, encoders)
    assert not torch.equal(run(grounded, unet_inputs, encoders), reference)
    after = {name.replace(".base_layer", ""): value for name, value in grounded.state_dict().items()}
    assert all(torch.equal(after[name], value) for name, value in before.items()), "parent or base weights moved"
    assert {name for name in after if name not in before} == {n for n in after if ".lora_" in n}


def test_save_then_load_on_a_fresh_unet_gives_the_same_outputs(grounded, parent_file, tmp_path, unet_inputs, encoders):
    params = add_adapter_lora(grounded, rank=4, alpha=8, position_net=True)
    tune(grounded, params, unet_inputs, encoders)
    tuned = run(grounded, unet_inputs, encoders)
    path = save_adapter_lora(grounded, tmp_path)
    assert not list(tmp_path.glob("*.tmp")), "the write is atomic"

    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        numel = sum(handle.get_tensor(k).numel() for k in keys)
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    wrapped = [m for m in grounded.modules() if hasattr(m, "base_layer")]
    assert numel == sum(4 * (m.in_features + m.out_features) for m in wrapped), "only the factors are stored"
    config = read_lora_config(path)
    assert (config["rank"], config["alpha"], config["position_net"]) == (4, 8.0, True)
    assert config["parent"]["file"] == parent_file.name and config["parent"]["modalities"] == ["boxes"]

    fresh = tiny_unet()
    load_grounding_adapter(fresh, parent_file)
    assert load_adapter_lora(fresh, path) == "default"
    assert torch.equal(run(fresh, unet_inputs, encoders), tuned)
    assert not any(p.requires_grad for p in adapter_parameters(fresh, "default").values())
    assert all(p.requires_grad for p in adapter_lora_parameters(fresh, "default"))


def test_merge_gives_the_same_outputs_and_a_plain_adapter_file(grounded, tmp_path, unet_inputs, encoders):
    module_names = [name for name, _ in grounded.named_modules()]
    parameter_names = [name for name, _ in grounded.named_parameters()]
    params = add_adapter_lora(grounded, rank=4, position_net=True)
    tune(grounded, params, unet_inputs, encoders)
    tuned = run(grounded, unet_inputs, encoders)
    with pytest.raises(GroundingAdapterError, match="merge_adapter_lora"):
        save_grounding_adapter(grounded, tmp_path / "refused.safetensors")

    merge_adapter_lora(grounded)
    assert torch.allclose(run(grounded, unet_inputs, encoders), tuned, atol=1e-5)
    assert [name for name, _ in grounded.named_modules()] == module_names
    assert [name for name, _ in grounded.named_parameters()] == parameter_names
    assert not any(hasattr(m, "peft_config") for m in grounded.modules())
    merged = save_grounding_adapter(grounded, tmp_path / "merged.safetensors")
    assert read_adapter_config(merged)["modalities"].keys() == {"boxes"}
    fresh = tiny_unet()
    load_grounding_adapter(fresh, merged)
    assert torch.equal(run(fresh, unet_inputs, encoders), run(grounded, unet_inputs, encoders))


def test_unload_restores_the_adapter_exactly(grounded, unet_inputs, encoders):
    reference, before = run(grounded, unet_inputs, encoders), snapshot(grounded)
    flags = {name: p.requires_grad for name, p in grounded.named_parameters()}
    params = add_adapter_lora(grounded, rank=2, position_net=True)
    tune(grounded, params, unet_inputs, encoders)
    unload_adapter_lora(grounded)
    after = snapshot(grounded)
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert {name: p.requires_grad for name, p in grounded.named_parameters()} == flags
    assert torch.equal(run(grounded, unet_inputs, encoders), reference)
    add_adapter_lora(grounded, rank=2)  # and a new one can be attached again


def test_mismatched_parent_is_a_typed_error(grounded, parent_file, tmp_path, caplog):
    add_adapter_lora(grounded, rank=4)
    path = save_adapter_lora(grounded, tmp_path / "lora.safetensors")

    with pytest.raises(LoraParentMismatchError, match="no grounding adapter named 'default'.*boxes.safetensors"):
        load_adapter_lora(tiny_unet(), path)
    other_modality = tiny_unet()
    add_grounding_adapter(other_modality, "keypoints")
    with pytest.raises(LoraParentMismatchError, match="differs in modalities"):
        load_adapter_lora(other_modality, path)
    other_options = tiny_unet()
    add_grounding_adapter(other_options, "boxes", tokenizer_options={"boxes": {"max_objs": 8}})
    with pytest.raises(LoraParentMismatchError, match="differs"):
        load_adapter_lora(other_options, path)

    other_weights = tiny_unet()
    add_grounding_adapter(other_weights, "boxes")  # same structure, untrained weights
    untouched = snapshot(other_weights)
    with pytest.raises(LoraParentMismatchError, match="holds other weights.*strict=False"):
        load_adapter_lora(other_weights, path)
    assert snapshot(other_weights).keys() == untouched.keys(), "a failed load leaves the UNet unchanged"
    with caplog.at_level(logging.WARNING):
        load_adapter_lora(other_weights, path, strict=False)
    assert "applying it anyway" in caplog.text and adapter_lora_parameters(other_weights, "default")


def test_files_of_the_other_kind_and_misuse_are_clear_errors(grounded, parent_file, tmp_path):
    with pytest.raises(AdapterFileError, match="grounding adapter: load it with load_grounding_adapter"):
        load_adapter_lora(grounded, parent_file)
    with pytest.raises(GroundingLoraError, match="carries no LoRA"):
        save_adapter_lora(grounded, tmp_path / "none.safetensors")
    with pytest.raises(GroundingLoraError, match="rank must be a positive integer"):
        add_adapter_lora(grounded, rank=0)
    with pytest.raises(GroundingLoraError, match="'to_out' names no linear layer.*to_out.0"):
        add_adapter_lora(grounded, rank=4, target=("to_q", "to_out"))
    assert not adapter_lora_parameters(grounded, "default"), "a refused add attaches nothing"
    add_adapter_lora(grounded, rank=4, target=("to_q",))
    with pytest.raises(GroundingLoraError, match="already carries a LoRA"):
        add_adapter_lora(grounded, rank=4)
    lora = save_adapter_lora(grounded, tmp_path)
    with pytest.raises(AdapterFileError, match="is a grounding LoRA, not an adapter"):
        load_grounding_adapter(tiny_unet(), lora)
    assert json.loads(json.dumps(read_lora_config(lora)))["targets"] == ["to_q"]


def test_grounding_lora_stays_on_beside_a_style_lora(grounded, tmp_path, unet_inputs, encoders, caplog):
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = tiny_unet()
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in donor.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "style", unet_lora_layers=get_peft_model_state_dict(donor))

    params = add_adapter_lora(grounded, rank=4)
    tune(grounded, params, unet_inputs, encoders)
    grounded.load_lora_adapter(
        tmp_path / "style", weight_name="pytorch_lora_weights.safetensors", adapter_name="style", prefix="unet"
    )
    grounded.set_adapters(["style"], weights=[0.5])  # diffusers activates only "style" in every peft layer
    styled = run(grounded, unet_inputs, encoders)
    detached = snapshot(grounded)
    unload_adapter_lora(grounded)
    assert not torch.equal(run(grounded, unet_inputs, encoders), styled), "the grounding LoRA was still acting"
    assert any("style" in name for name in detached), "the style LoRA stays loaded"

    add_adapter_lora(grounded, rank=4)
    grounded.unload_lora()  # diffusers strips every peft layer, the grounding LoRA's too
    with caplog.at_level(logging.WARNING), pytest.raises(GroundingLoraError, match="carries no LoRA"):
        save_adapter_lora(grounded, tmp_path / "gone.safetensors")
    assert "removed from outside gligen-ext" in caplog.text
    assert not any(hasattr(m, "peft_config") for m in grounded.modules() if m is not grounded)
    save_grounding_adapter(grounded, tmp_path / "plain.safetensors")


def test_pipeline_loads_and_unloads_a_grounding_lora(grounded, parent_file, tmp_path, unet_inputs, encoders):
    from gligen_ext.pipelines import GroundedStableDiffusionPipeline
    from gligen_ext.testing import tiny_sd_components

    tune(grounded, add_adapter_lora(grounded, rank=4), unet_inputs, encoders)
    lora = save_adapter_lora(grounded, tmp_path)
    pipe = GroundedStableDiffusionPipeline(**tiny_sd_components(tmp_path / "tokenizer"))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_grounding_adapter(parent_file)

    def generate():
        options = dict(num_inference_steps=2, guidance_scale=6.0, output_type="np", grounding_beta=1.0)
        return pipe("a cat and a dog", layout=LAYOUT, generator=torch.Generator().manual_seed(0), **options).images

    plain = generate()
    assert pipe.load_grounding_lora(lora) == "default"
    assert not (generate() == plain).all()
    pipe.unload_grounding_lora()
    assert (generate() == plain).all()
