"""Adapter files: adapter-only contents, exact round trips, and clear errors for bad files."""

import json
import os
import stat

import pytest
import torch
from conftest import open_gates, randomize
from safetensors import safe_open
from safetensors.torch import save_file

from gligen_ext import (
    AdapterFileError,
    AdapterMismatchError,
    GroundingAdapterError,
    adapter_parameters,
    add_grounding_adapter,
    grounding_adapters,
    load_grounding_adapter,
    prepare_grounding,
    read_adapter_config,
    save_grounding_adapter,
)
from gligen_ext.testing import tiny_unet

LAYOUT = {"boxes": [{"phrase": "a cat", "box": [0.1, 0.2, 0.6, 0.9]}], "depth": torch.rand(32, 32)}


def trained(modalities=("boxes", "depth"), seed=0, **options):
    unet = tiny_unet()
    add_grounding_adapter(unet, list(modalities), **options)
    open_gates(unet, 0.7)
    randomize(unet.position_net, seed)
    for module in unet.modules():
        if type(module).__name__ == "GatedSelfAttention":
            randomize(module, seed + 1)
    return unet


def run(unet, inputs, encoders):
    sample, timestep, context = inputs
    grounding = prepare_grounding(unet, LAYOUT, encoders, batch_size=2, strict=False)
    with torch.no_grad():
        return unet(sample, timestep, context, cross_attention_kwargs={"gligen": grounding}).sample


def test_round_trip_is_exact_and_file_holds_only_adapter_weights(tmp_path, unet_inputs, encoders):
    source = trained()
    path = save_grounding_adapter(source, tmp_path, dtype="fp32", base_model="tiny")
    assert path.name == "grounding_adapter.safetensors"
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
    base_keys = set(tiny_unet().state_dict())
    assert not keys & base_keys, "the adapter file must not hold base weights"
    assert all(".fuser." in k or k.startswith("position_net.") for k in keys)
    assert any(k.startswith("position_net.boxes.") for k in keys) and any(
        k.startswith("position_net.depth.") for k in keys
    )
    config = json.loads(metadata["gligen_ext_config"])
    assert config["modalities"].keys() == {"boxes", "depth"} and config["base_model"] == "tiny"

    target = tiny_unet()
    name = load_grounding_adapter(target, path)
    assert name == "default"
    for key, param in adapter_parameters(target, name).items():
        assert torch.equal(param, adapter_parameters(source, "default")[key]), key
    assert torch.equal(run(target, unet_inputs, encoders), run(source, unet_inputs, encoders))


def test_visual_positions_round_trip_and_follow_a_non_square_latent(tmp_path, encoders):
    source = trained(("boxes",), visual_position_freqs=4)
    path = save_grounding_adapter(source, tmp_path, dtype="fp32")
    assert read_adapter_config(path)["visual_position_freqs"] == 4
    target = tiny_unet()
    load_grounding_adapter(target, path)
    assert any(k.endswith("fuser.visual_position.weight") for k in adapter_parameters(target, "default"))
    torch.manual_seed(0)
    sample, context = torch.randn(1, 4, 16, 24), torch.randn(1, 8, 32)  # non-square: levels 16x24 and 8x12
    layout = {"boxes": [{"phrase": "a cat", "box": [0.1, 0.2, 0.6, 0.9]}]}
    outputs = []
    for unet in (source, target):
        grounding = prepare_grounding(unet, layout, encoders, batch_size=1)
        with torch.no_grad():
            outputs.append(unet(sample, 10, context, cross_attention_kwargs={"gligen": grounding}).sample)
    assert torch.equal(*outputs)
    assert read_adapter_config(save_grounding_adapter(trained(("boxes",)), tmp_path / "plain"))[
        "visual_position_freqs"] == 0


def test_a_narrower_feed_forward_makes_a_smaller_file_that_round_trips(tmp_path, unet_inputs, encoders):
    source = trained(("boxes",), ff_mult=1)
    path = save_grounding_adapter(source, tmp_path / "small", dtype="fp32")
    full = save_grounding_adapter(trained(("boxes",)), tmp_path / "full", dtype="fp32")
    assert (read_adapter_config(path)["ff_mult"], read_adapter_config(full)["ff_mult"]) == (1, 4)
    assert path.stat().st_size < 0.8 * full.stat().st_size
    target = tiny_unet()
    load_grounding_adapter(target, path)
    assert torch.equal(run(target, unet_inputs, encoders), run(source, unet_inputs, encoders))
    with pytest.raises(GroundingAdapterError, match="ff_mult must be a positive integer"):
        add_grounding_adapter(tiny_unet(), "boxes", ff_mult=0)


def test_files_without_ff_mult_load_with_gligens(tmp_path):
    path = save_grounding_adapter(trained(("boxes",)), tmp_path / "old", dtype="fp32")
    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    config = json.loads(metadata["gligen_ext_config"])
    del config["ff_mult"]  # as files written before the option
    save_file(tensors, str(path), metadata={**metadata, "gligen_ext_config": json.dumps(config)})
    target = tiny_unet()
    load_grounding_adapter(target, path)
    assert all(layer.ff_mult == 4 for layer in target.modules() if type(layer).__name__ == "GatedSelfAttention")


def test_single_modality_keys_equal_diffusers_names(tmp_path):
    path = save_grounding_adapter(trained(("boxes",)), tmp_path / "boxes.safetensors")
    with safe_open(str(path), "pt") as handle:
        keys = set(handle.keys())
    assert "down_blocks.1.attentions.0.transformer_blocks.0.fuser.alpha_attn" in keys
    assert {"position_net.linears.0.weight", "position_net.null_positive_feature"} <= keys


@pytest.mark.parametrize(
    "dtype, expected", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_save_dtypes(tmp_path, dtype, expected):
    path = save_grounding_adapter(trained(("boxes",)), tmp_path / f"{dtype}.safetensors", dtype=dtype)
    with safe_open(str(path), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {expected}
    assert read_adapter_config(path)["dtype"] == str(expected).removeprefix("torch.")
    unet = tiny_unet()
    load_grounding_adapter(unet, path)
    assert all(p.dtype == torch.float32 for p in adapter_parameters(unet, "default").values())


def test_loads_onto_from_pretrained_unet_and_stacks_under_new_name(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "unet")
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    path = save_grounding_adapter(trained(("boxes",)), tmp_path / "a.safetensors")
    load_grounding_adapter(unet, path)
    with pytest.raises(GroundingAdapterError, match="already loaded"):
        load_grounding_adapter(unet, path)
    assert load_grounding_adapter(unet, path, adapter_name="second", weight=0.5) == "second"
    assert set(grounding_adapters(unet)) == {"default", "second"}
    assert grounding_adapters(unet)["second"].weight == 0.5


def test_missing_file(tmp_path):
    with pytest.raises(AdapterFileError, match="does not exist"):
        load_grounding_adapter(tiny_unet(), tmp_path / "nope.safetensors")


def test_hub_id_unreachable_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterFileError, match="hub"):
        load_grounding_adapter(tiny_unet(), "someone/missing-adapter")


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x00" * 4 + b"PK\x03\x04" * 10])
def test_not_safetensors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    unet = tiny_unet()
    with pytest.raises(AdapterFileError, match="not a readable safetensors"):
        load_grounding_adapter(unet, path)
    assert not grounding_adapters(unet)


def test_truncated_file_leaves_unet_untouched(tmp_path, unet_inputs):
    path = save_grounding_adapter(trained(("boxes",)), tmp_path / "a.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    unet = tiny_unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    with pytest.raises(AdapterFileError):
        load_grounding_adapter(unet, path)
    assert unet.state_dict().keys() == before.keys() and not hasattr(unet, "position_net")


def test_corrupt_values_and_foreign_safetensors(tmp_path):
    source = trained(("boxes",))
    path = save_grounding_adapter(source, tmp_path / "a.safetensors")
    with safe_open(str(path), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    tensors["position_net.linears.0.weight"][0, 0] = float("nan")
    save_file(tensors, tmp_path / "nan.safetensors", metadata=metadata)
    with pytest.raises(AdapterFileError, match="NaN"):
        load_grounding_adapter(tiny_unet(), tmp_path / "nan.safetensors")
    save_file({"x": torch.zeros(2)}, tmp_path / "lora.safetensors")
    with pytest.raises(AdapterFileError, match="without a gligen-ext config"):
        load_grounding_adapter(tiny_unet(), tmp_path / "lora.safetensors")
    del tensors["position_net.linears.0.weight"]
    save_file(tensors, tmp_path / "short.safetensors", metadata=metadata)
    unet = tiny_unet()
    with pytest.raises(AdapterMismatchError, match="missing"):
        load_grounding_adapter(unet, tmp_path / "short.safetensors")
    assert not grounding_adapters(unet)


def test_dimension_mismatch_is_named(tmp_path):
    path = save_grounding_adapter(trained(("boxes",)), tmp_path / "a.safetensors")
    wider = tiny_unet(cross_attention_dim=64)
    with pytest.raises(AdapterMismatchError, match="trained for cross_attention_dim 32, this UNet has 64"):
        load_grounding_adapter(wider, path)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    source = trained(("boxes",))
    path = save_grounding_adapter(source, tmp_path / "a.safetensors")
    original = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("gligen_ext.adapters.save_file", crash)
    with pytest.raises(OSError):
        save_grounding_adapter(source, path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_file_has_the_umask_mode_like_any_new_file(tmp_path):
    previous = os.umask(0o022)
    try:
        path = save_grounding_adapter(trained(("boxes",)), tmp_path / "a.safetensors")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
