"""gligen-ext convert / export: every published format lands tensor for tensor in the right adapter parameter, the
converted adapter computes what diffusers' own GLIGEN UNet computes, and bad files fail with one clear error."""

import argparse

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from gligen_checkpoints import SD_LIKE, gated_unet, official_checkpoint, randomize_all, to_ldm_names
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gligen_ext import (
    AdapterMismatchError,
    adapter_parameters,
    add_grounding_adapter,
    load_grounding_adapter,
    read_adapter_config,
    save_grounding_adapter,
)
from gligen_ext.checkpoint_formats import ConversionError
from gligen_ext.cli import main
from gligen_ext.convert import (
    choose_modality,
    conv_in_path,
    convert_checkpoint,
    load_conv_in_weights,
    save_converted,
)
from gligen_ext.export import export_comfyui
from gligen_ext.testing import tiny_unet, tiny_unet_config

RELEASED = [  # the 10 official checkpoints: (modality, inpainting)
    *[(m, False) for m in ("boxes", "image_boxes", "keypoints", "depth", "canny", "hed", "normal", "semantic")],
    ("boxes", True),
    ("image_boxes", True),
]


def saved_official(tmp_path, modality, inpainting=False, **edits):
    checkpoint, expected = official_checkpoint(modality, inpainting=inpainting)
    checkpoint |= edits
    path = tmp_path / f"{modality}{'_inpaint' if inpainting else ''}.pth"
    torch.save(checkpoint, path)
    return path, checkpoint, expected


@pytest.fixture(scope="module")
def depth_checkpoint(tmp_path_factory):
    """A saved official depth checkpoint (ConvNeXt-T included, so built once): (path, checkpoint, expected)."""
    return saved_official(tmp_path_factory.mktemp("depth"), "depth")


def plain_unet(gated, **overrides):
    """A default-attention UNet holding ``gated``'s base weights."""
    unet = UNet2DConditionModel(**{**SD_LIKE, **overrides}).eval()
    base = {k: v for k, v in gated.state_dict().items() if ".fuser." not in k and not k.startswith("position_net.")}
    unet.load_state_dict(base)
    return unet


def box_inputs(batch=2, n=30, width=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, n, 2, 2, generator=generator).sort(dim=2).values
    boxes = torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0], corners[..., 1, 1]], dim=-1)
    masks = (torch.rand(batch, n, generator=generator) > 0.5).float()
    phrases, images = torch.randn(2, batch, n, width, generator=generator)
    return {
        "gated": dict(boxes=boxes, masks=masks, positive_embeddings=phrases),
        "gated-text-image": dict(
            boxes=boxes,
            masks=masks,
            phrases_masks=masks,
            image_masks=1 - masks,
            phrases_embeddings=phrases,
            image_embeddings=images,
        ),
    }


def forward(unet, gligen, *, channels=4, size=16):
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, channels, size, size, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 700]), context, cross_attention_kwargs={"gligen": gligen}).sample


def test_ldm_names_invert_diffusers_converter():
    """The test checkpoints' LDM names are exactly what diffusers' converter maps back to the diffusers UNet."""
    state = gated_unet().state_dict()
    ldm = to_ldm_names(state, SD_LIKE["layers_per_block"])
    assert "input_blocks.1.1.transformer_blocks.0.fuser.linear.weight" in ldm
    assert "output_blocks.11.1.transformer_blocks.0.fuser.alpha_attn" in ldm
    back = convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in ldm.items()}, SD_LIKE)
    assert back.keys() == {k for k in state if not k.startswith("position_net.")}
    assert all(back[k] is state[k] for k in back)


@pytest.mark.parametrize("attention_type, modality", [("gated", "boxes"), ("gated-text-image", "image_boxes")])
def test_diffusers_unet_converts_to_an_adapter_with_the_same_output(tmp_path, attention_type, modality):
    gated = UNet2DConditionModel(**tiny_unet_config(), attention_type=attention_type).eval()
    randomize_all(gated, seed=3)
    gated.save_pretrained(tmp_path / "unet")
    converted = convert_checkpoint(tmp_path / "unet")
    assert converted.modality == modality and converted.num_gated_layers == 4
    path = save_converted(converted, tmp_path / "adapter.safetensors")[0]

    # a single weights file without its config.json gives the same adapter, its layout inferred from the keys
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((tmp_path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())
    inferred = convert_checkpoint(lone)
    assert inferred.config["base"] == converted.config["base"] and inferred.tensors.keys() == converted.tensors.keys()

    plain = tiny_unet()
    plain.load_state_dict(
        {k: v for k, v in gated.state_dict().items() if ".fuser." not in k and "position_net" not in k}
    )
    load_grounding_adapter(plain, path)
    inputs = box_inputs()[attention_type]
    theirs = forward(gated, inputs)
    assert (theirs - forward(gated, None)).abs().max() > 1e-2, "the gates are open: grounding changes the output"
    assert (forward(plain, {"default": {modality: inputs}}) - theirs).abs().max() < 1e-5


@pytest.mark.parametrize("modality, inpainting", RELEASED)
def test_official_checkpoint_lands_tensor_for_tensor(tmp_path, modality, inpainting):
    path, checkpoint, expected = saved_official(tmp_path, modality, inpainting)
    converted = convert_checkpoint(path)
    assert converted.modality == modality and converted.num_gated_layers == 16
    assert converted.source_label == "official GLIGEN checkpoint"
    written = save_converted(converted, tmp_path / "out.safetensors")
    tensors = load_file(written[0])
    assert tensors.keys() == expected.keys(), "no checkpoint tensor left over, no adapter parameter missing"
    for key, value in expected.items():
        assert torch.equal(tensors[key], value), key
    config = read_adapter_config(written[0])
    assert config["converted_from"] == {"format": "official", "source": path.name, "inpainting": inpainting}
    options = config["modalities"][modality]["options"]
    if modality in ("depth", "canny", "hed", "normal", "semantic"):  # GLIGEN's spatial net, rebuilt on load
        assert options["backbone"] == "convnext_tiny" and options["first_conv_override"]
        assert (options["grid_size"], options["resize_input"]) == (8, 256)
        assert options["downsampler"] == ("resize" if modality == "hed" else "learned")

    unet = UNet2DConditionModel(**{**SD_LIKE, "in_channels": 9 if inpainting else 4})
    load_grounding_adapter(unet, written[0])
    for key, param in adapter_parameters(unet, "default").items():
        assert torch.equal(param, expected[key]), key
    if inpainting:
        assert written[1] == conv_in_path(written[0])
        first_conv = load_file(written[1])
        assert torch.equal(first_conv["conv_in.weight"], checkpoint["model"]["input_blocks.0.0.weight"])
        load_conv_in_weights(unet, written[1])
        assert torch.equal(unet.conv_in.weight, checkpoint["model"]["input_blocks.0.0.weight"])
        with pytest.raises(AdapterMismatchError, match="in_channels=9"):
            load_conv_in_weights(UNet2DConditionModel(**SD_LIKE), written[1])
    else:
        assert len(written) == 1


@pytest.mark.parametrize("inpainting", [False, True])
def test_official_box_checkpoint_computes_what_diffusers_gated_unet_computes(tmp_path, inpainting):
    """Official LDM names -> adapter, on a plain UNet: same output as the gated UNet the checkpoint came from. For
    inpainting, the checkpoint's first conv reaches the UNet through ``load_conv_in_weights``."""
    path, _, _ = saved_official(tmp_path, "boxes", inpainting)
    channels = 9 if inpainting else 4
    gated = gated_unet(in_channels=channels)  # the same seed official_checkpoint used
    written = save_converted(convert_checkpoint(path), tmp_path / "out.safetensors")
    plain = plain_unet(gated, in_channels=channels)
    if inpainting:
        torch.nn.init.normal_(plain.conv_in.weight)  # a base 9-channel conv that is not GLIGEN's
        load_conv_in_weights(plain, written[1])
    load_grounding_adapter(plain, written[0])
    inputs = box_inputs()["gated"]
    theirs = forward(gated, inputs, channels=channels)
    assert (forward(plain, {"default": {"boxes": inputs}}, channels=channels) - theirs).abs().max() < 1e-5


def test_spatial_first_conv_reproduces_gligens_widened_conv(tmp_path, depth_checkpoint):
    """GLIGEN's depth model runs conv([z ; downsampler(map)], W) + b with W [C, 12, 3, 3]; the converted adapter
    gives the same first-conv output from the base conv plus its residual."""
    path, checkpoint, _ = depth_checkpoint
    model = checkpoint["model"]
    unet = UNet2DConditionModel(**SD_LIKE).eval()
    unet.conv_in.bias.data.copy_(model["input_blocks.0.0.bias"])  # GLIGEN keeps SD's bias
    load_grounding_adapter(unet, save_converted(convert_checkpoint(path), tmp_path / "depth.safetensors")[0])
    captured = []
    unet.conv_in.register_forward_hook(lambda module, args, output: captured.append(output))
    generator = torch.Generator().manual_seed(2)
    latents, maps = torch.randn(1, 4, 16, 16, generator=generator), torch.rand(1, 1, 256, 256, generator=generator)
    depth = {"maps": maps * 2 - 1, "masks": torch.ones(1), "conv_masks": torch.ones(1)}
    with torch.no_grad():
        unet(latents, 10, torch.randn(1, 77, 32), cross_attention_kwargs={"gligen": {"default": {"depth": depth}}})
        small = F.interpolate(depth["maps"], size=(64, 64), mode="bicubic")
        hidden = F.silu(
            F.conv2d(small, model["downsample_net.layers.0.weight"], model["downsample_net.layers.0.bias"], 2, 1)
        )
        extra = F.conv2d(hidden, model["downsample_net.layers.2.weight"], model["downsample_net.layers.2.bias"], 2, 1)
        expected = F.conv2d(
            torch.cat([latents, extra], 1), model["input_blocks.0.0.weight"], model["input_blocks.0.0.bias"], padding=1
        )
    assert (captured[0] - expected).abs().max() < 1e-4


def test_depth_and_canny_need_their_name(tmp_path):
    """Depth and Canny nets have the same keys and shapes: config_dict or --modality names them."""
    position = {"convnext_tiny_backbone.stages.0.0.gamma": torch.zeros(96), "pos_embedding": torch.zeros(1, 64, 768)}
    downsampler = {"downsample_net.layers.0.weight": torch.zeros(4, 1, 4, 4)}
    assert choose_modality(position, downsampler, hint="depth") == "depth"
    assert choose_modality(position, downsampler, hint="depth", override="canny") == "canny"
    with pytest.raises(ConversionError, match="--modality depth or --modality canny"):
        choose_modality(position, downsampler)
    with pytest.raises(ConversionError, match="--modality says 'keypoints', but the weights are a canny or depth"):
        choose_modality(position, downsampler, override="keypoints")
    with pytest.raises(ConversionError, match="config_dict says 'hed', but the weights are a canny or depth"):
        choose_modality(position, downsampler, hint="hed")
    assert choose_modality(position, {}) == "hed"
    wide = {"downsample_net.layers.0.weight": torch.zeros(4, 3, 4, 4)}
    assert choose_modality(position, wide) == "normal"
    assert choose_modality(position | {"in_conv.weight": torch.zeros(3, 152, 3, 3)}, downsampler) == "semantic"


def test_resaved_model_dict_converts_with_a_named_modality(tmp_path, depth_checkpoint):
    _, checkpoint, _ = depth_checkpoint
    torch.save(checkpoint["model"], tmp_path / "model_only.pth")  # the re-saved form: UNet tensors alone
    with pytest.raises(ConversionError, match="--modality depth or --modality canny"):
        convert_checkpoint(tmp_path / "model_only.pth")
    assert convert_checkpoint(tmp_path / "model_only.pth", modality="canny").modality == "canny"


def test_comfyui_export_round_trip(tmp_path):
    path, checkpoint, _ = saved_official(tmp_path, "boxes")
    adapter = save_converted(convert_checkpoint(path), tmp_path / "boxes.safetensors")[0]
    exported = export_comfyui(adapter, tmp_path / "comfy.safetensors")
    with safe_open(str(exported), "pt") as handle:
        keys = set(handle.keys())
    official = {k for k in checkpoint["model"] if ".fuser." in k or k.startswith("position_net.")}
    assert keys == official, "ComfyUI reads GLIGEN's own names: LDM fuser keys and position_net.*"
    # comfy/gligen.py collects fusers per "input_blocks.N." / "middle_block.N." / "output_blocks.N." in that order
    found = [
        b
        for a in ("input_blocks", "middle_block", "output_blocks")
        for b in range(20)
        if any(f"{a}.{b}." in k and ".fuser." in k for k in keys)
    ]
    assert len(found) == 16

    back = convert_checkpoint(exported)
    assert back.source_label == "pruned GLIGEN file (ComfyUI format)"
    original = load_file(adapter)
    assert back.tensors.keys() == original.keys() and all(torch.equal(back.tensors[k], v) for k, v in original.items())
    assert back.config["base"] == read_adapter_config(adapter)["base"]

    prefixed = {f"model.diffusion_model.{k}" if ".fuser." in k else k: v for k, v in load_file(exported).items()}
    save_file(prefixed, tmp_path / "prefixed.safetensors")
    assert convert_checkpoint(tmp_path / "prefixed.safetensors").tensors.keys() == original.keys()


def test_export_refuses_what_comfyui_cannot_load(tmp_path):
    path, _, _ = saved_official(tmp_path, "keypoints")
    adapter = save_converted(convert_checkpoint(path), tmp_path / "keypoints.safetensors")[0]
    with pytest.raises(ConversionError, match="ComfyUI's GLIGEN loader supports only boxes"):
        export_comfyui(adapter, tmp_path / "comfy.safetensors")


def test_pickled_objects_are_refused_with_the_fix(tmp_path):
    path, _, _ = saved_official(tmp_path, "boxes", config_dict=argparse.Namespace(model="GLIGEN"))
    with pytest.raises(ConversionError, match=r"weights_only refused class argparse\.Namespace") as error:
        convert_checkpoint(path)
    assert 'torch.save({k: v for k, v in ckpt["model"].items()}, "model_only.pth")' in str(error.value)


def test_unknown_and_missing_keys_are_named(tmp_path):
    checkpoint, _ = official_checkpoint("boxes")
    model = dict(checkpoint["model"])
    model["input_blocks.1.1.transformer_blocks.0.fuser.extra_gate"] = torch.zeros(1)
    torch.save(model, tmp_path / "extra.pth")
    with pytest.raises(
        ConversionError,
        match=r"unexpected \['down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.fuser\.extra_gate'\]",
    ):
        convert_checkpoint(tmp_path / "extra.pth")
    model = dict(checkpoint["model"])
    model["time_embed.7.weight"] = torch.zeros(1)
    torch.save(model, tmp_path / "foreign.pth")
    with pytest.raises(ConversionError, match=r"time_embed\.7\.weight"):
        convert_checkpoint(tmp_path / "foreign.pth")
    model = dict(checkpoint["model"])
    del model["position_net.null_position_feature"]
    torch.save(model, tmp_path / "short.pth")
    with pytest.raises(ConversionError, match=r"1 missing \['position_net\.null_position_feature'\]"):
        convert_checkpoint(tmp_path / "short.pth")
    torch.save(checkpoint | {"notes": "hi"}, tmp_path / "top.pth")
    with pytest.raises(ConversionError, match=r"unknown top-level entries \['notes'\]"):
        convert_checkpoint(tmp_path / "top.pth")


def test_wider_tokens_do_not_load_into_an_sd1_unet(tmp_path):
    """An SD-2-style adapter (1024-d tokens; 64 here) is refused by the narrower base with a named reason."""
    gated = UNet2DConditionModel(**tiny_unet_config(cross_attention_dim=64), attention_type="gated")
    gated.save_pretrained(tmp_path / "unet")
    path = save_converted(convert_checkpoint(tmp_path / "unet"), tmp_path / "wide.safetensors")[0]
    with pytest.raises(AdapterMismatchError, match="cross_attention_dim 64, this UNet has 32"):
        load_grounding_adapter(tiny_unet(), path)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ConversionError, match="cannot be fetched from the Hugging Face hub"):
        convert_checkpoint("masterful/gligen-1-4-generation-text-box")


def test_cli_convert_and_export(tmp_path, capsys):
    path, _, _ = saved_official(tmp_path, "boxes")
    out = tmp_path / "boxes.safetensors"
    assert main(["convert", str(path), "--out", str(out), "--dtype", "fp16"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"official GLIGEN checkpoint, modality boxes (text), 16 gated layers -> {out} (")
    assert {v.dtype for v in load_file(out).values()} == {torch.float16}
    assert main(["export", str(out), "--format", "comfyui", "--out", str(tmp_path / "comfy.safetensors")]) == 0
    assert "ComfyUI" in capsys.readouterr().out
    assert main(["convert", str(path), "--out", str(out), "--modality", "dept"]) == 2
    assert "--modality: expected one of boxes," in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["not a checkpoint", "truncated", "pickled objects"])
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys, kind):
    path = tmp_path / "source.pth"
    if kind == "not a checkpoint":
        path.write_text("hello, this is text")
    else:
        torch.save({"model": {"a": torch.zeros(3)}, "config_dict": argparse.Namespace(a=1)}, path)
        if kind == "truncated":
            torch.save({"model": {"a": torch.zeros(300)}}, path)
            path.write_bytes(path.read_bytes()[:200])
    assert main(["convert", str(path), "--out", str(tmp_path / "out.safetensors")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("gligen-ext: error: source.pth") and error.count("\n") == 1
    assert not (tmp_path / "out.safetensors").exists()


def test_a_gligen_ext_adapter_is_not_converted_again(tmp_path):
    unet = tiny_unet()
    add_grounding_adapter(unet, "boxes")
    adapter = save_grounding_adapter(unet, tmp_path / "boxes.safetensors")
    with pytest.raises(ConversionError, match="already a gligen-ext adapter; load it with load_grounding_adapter"):
        convert_checkpoint(adapter)
