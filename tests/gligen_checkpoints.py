"""Random-weight GLIGEN checkpoints in the published formats, small but laid out like SD 1.x (for the convert tests).

The LDM key names come from ``to_ldm_names``, a hand-written inverse of diffusers' LDM -> diffusers UNet converter;
``test_ldm_names_invert_diffusers_converter`` checks it against that converter, so the converter under test is never
checked against a table of its own making.
"""

from __future__ import annotations

import re

import torch
from diffusers import UNet2DConditionModel

# SD 1.x's block structure (3 attention levels + 1 without, 2 resnets per level, 16 transformer blocks), tiny widths
SD_LIKE = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)
RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
TOP_NAMES = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# official grounding-input module names, as written in GLIGEN's configs
OFFICIAL_NAMES = {
    "boxes": "text",
    "image_boxes": "text_image",
    "keypoints": "keypoint",
    "depth": "depth",
    "canny": "canny",
    "hed": "hed",
    "normal": "normal",
    "semantic": "sem",
}
CONVNEXT_T = ((3, 96), (3, 192), (9, 384), (3, 768))  # (blocks, width) per stage, facebookresearch/ConvNeXt


def gated_unet(attention_type: str = "gated", *, in_channels: int = 4, seed: int = 0) -> UNet2DConditionModel:
    """diffusers' own GLIGEN UNet, SD-1.x-shaped, every parameter random (gates and nulls too)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**SD_LIKE, "in_channels": in_channels}, attention_type=attention_type).eval()
    randomize_all(unet, seed)
    return unet


def randomize_all(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random; gates around 1 (tanh ~ 0.76), so grounding changes the output clearly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            scale, offset = (0.5, 1.0) if name.endswith(("alpha_attn", "alpha_dense")) else (0.1, 0.0)
            param.copy_(torch.randn(param.shape, generator=generator) * scale + offset)


def to_ldm_names(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """diffusers UNet keys -> LDM (official GLIGEN / original SD) keys; ``position_net.*`` is left out."""
    per_level = layers_per_block + 1
    up_attention = {int(k.split(".")[1]) for k in state if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    out = {}
    for key, value in state.items():
        if key.startswith("position_net."):
            continue
        out[_ldm_name(key, per_level, up_attention)] = value
    return out


def _ldm_name(key: str, per_level: int, up_attention: set[int]) -> str:
    for new, old in TOP_NAMES.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        index = int(m.group(1)) * per_level + int(m.group(3)) + 1
        return _block(f"input_blocks.{index}", m.group(2), m.group(4))
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m.group(1)) + 1) * per_level}.0.op.{m.group(2)}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        index = 1 if m.group(1) == "attentions" else 2 * int(m.group(2))
        return _block(f"middle_block.{index}", m.group(1), m.group(3), inner=False)
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        return _block(f"output_blocks.{int(m.group(1)) * per_level + int(m.group(3))}", m.group(2), m.group(4))
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        level = int(m.group(1))
        slot = 2 if level in up_attention else 1
        return f"output_blocks.{level * per_level + per_level - 1}.{slot}.conv.{m.group(2)}"
    raise KeyError(f"no LDM name for {key}")


def _block(prefix: str, kind: str, rest: str, *, inner: bool = True) -> str:
    if kind == "attentions":
        return f"{prefix}.1.{rest}" if inner else f"{prefix}.{rest}"
    first, _, tail = rest.partition(".")
    return f"{prefix}.0.{RESNET_NAMES[first]}.{tail}" if inner else f"{prefix}.{RESNET_NAMES[first]}.{tail}"


def official_position_net(modality: str, token_dim: int, seed: int) -> dict[str, torch.Tensor]:
    """Random position-net (and downsampler) tensors with the official names and shapes, for the modalities
    diffusers has no model of (keypoints, spatial maps); keys without the ``position_net.`` prefix except for
    ``downsample_net.layers.*``."""
    generator = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {}

    def mlp(prefix: str, in_dim: int) -> None:
        for index, (rows, cols) in zip((0, 2, 4), ((512, in_dim), (512, 512), (token_dim, 512))):
            shapes[f"{prefix}.{index}.weight"], shapes[f"{prefix}.{index}.bias"] = (rows, cols), (rows,)

    if modality == "keypoints":
        shapes |= {"person_embeddings": (8, token_dim), "keypoint_embeddings": (17, token_dim)}
        shapes |= {"null_person_feature": (token_dim,), "null_xy_feature": (32,)}
        mlp("linears", token_dim + 32)
    else:
        shapes |= _convnext_shapes(3) | {"pos_embedding": (1, 64, 768), "null_feature": (768,)}
        mlp("linears", 768)
        map_channels = {"normal": 3, "semantic": 152}.get(modality, 1)
        if modality == "semantic":
            shapes |= {"in_conv.weight": (3, 152, 3, 3), "in_conv.bias": (3,)}
        if modality != "hed":
            hidden = 16 if modality == "semantic" else 4
            shapes |= {"downsample_net.layers.0.weight": (hidden, map_channels, 4, 4)}
            shapes |= {"downsample_net.layers.0.bias": (hidden,), "downsample_net.layers.2.weight": (8, hidden, 4, 4)}
            shapes |= {"downsample_net.layers.2.bias": (8,)}
    return {k: torch.randn(shape, generator=generator) * 0.1 for k, shape in shapes.items()}


def _convnext_shapes(in_channels: int) -> dict[str, tuple[int, ...]]:
    """ConvNeXt-T as GLIGEN embeds it (no head, no final norm), under ``convnext_tiny_backbone.``."""
    shapes: dict[str, tuple[int, ...]] = {}
    previous = in_channels
    for stage, (blocks, width) in enumerate(CONVNEXT_T):
        down = f"convnext_tiny_backbone.downsample_layers.{stage}"
        if stage == 0:  # stem: 4x4 patchify conv, then a channels-first LayerNorm
            shapes |= {f"{down}.0.weight": (width, previous, 4, 4), f"{down}.0.bias": (width,)}
            shapes |= {f"{down}.1.weight": (width,), f"{down}.1.bias": (width,)}
        else:  # LayerNorm, then a 2x2 stride-2 conv
            shapes |= {f"{down}.0.weight": (previous,), f"{down}.0.bias": (previous,)}
            shapes |= {f"{down}.1.weight": (width, previous, 2, 2), f"{down}.1.bias": (width,)}
        for block in range(blocks):
            p = f"convnext_tiny_backbone.stages.{stage}.{block}"
            shapes |= {f"{p}.dwconv.weight": (width, 1, 7, 7), f"{p}.dwconv.bias": (width,)}
            shapes |= {f"{p}.norm.weight": (width,), f"{p}.norm.bias": (width,), f"{p}.gamma": (width,)}
            shapes |= {f"{p}.pwconv1.weight": (4 * width, width), f"{p}.pwconv1.bias": (4 * width,)}
            shapes |= {f"{p}.pwconv2.weight": (width, 4 * width), f"{p}.pwconv2.bias": (width,)}
        previous = width
    return shapes


def official_checkpoint(modality: str, *, inpainting: bool = False, seed: int = 0) -> tuple[dict, dict]:
    """(what GLIGEN's trainer saves, adapter key -> the tensor that must land there).

    The ``model`` entry is a whole SD-shaped UNet with LDM names; text encoder, VAE, schedule, optimiser state and a
    plain-dict ``config_dict`` sit beside it, as in a released checkpoint (whose config_dict is OmegaConf instead).
    """
    attention = "gated-text-image" if modality == "image_boxes" else "gated"
    unet = gated_unet(attention, in_channels=9 if inpainting else 4, seed=seed)
    state = unet.state_dict()
    model = to_ldm_names(state, SD_LIKE["layers_per_block"])
    expected = {k: v for k, v in state.items() if ".fuser." in k}
    token_dim = SD_LIKE["cross_attention_dim"]
    if modality in ("boxes", "image_boxes"):
        position = {k.removeprefix("position_net."): v for k, v in state.items() if k.startswith("position_net.")}
    else:
        position = official_position_net(modality, token_dim, seed + 1)
    downsampler = {k: position.pop(k) for k in [k for k in position if k.startswith("downsample_net.")]}
    model |= {f"position_net.{k}": v for k, v in position.items()} | downsampler
    renamed = {k.replace("convnext_tiny_backbone.", "backbone."): v for k, v in position.items()}
    expected |= {f"position_net.{k}": v for k, v in renamed.items()}
    if modality not in ("boxes", "image_boxes", "keypoints"):
        extra = 1 if modality == "hed" else 8
        generator = torch.Generator().manual_seed(seed + 2)
        first_conv = torch.randn(SD_LIKE["block_out_channels"][0], 4 + extra, 3, 3, generator=generator)
        model["input_blocks.0.0.weight"] = first_conv
        expected["position_net.conv_in_latent_weight"] = first_conv[:, :4]
        expected["position_net.conv_in_residual_proj.weight"] = first_conv[:, 4:]
        for key, value in downsampler.items():
            expected[key.replace("downsample_net.layers.", "position_net.downsample_net.")] = value
    target = f"grounding_input.{OFFICIAL_NAMES[modality]}_grounding_tokinzer_input.GroundingNetInput"
    checkpoint = {
        "model": model,
        "text_encoder": {"transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 2)},
        "autoencoder": {"encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)},
        "diffusion": {"betas": torch.linspace(0.00085, 0.012, 10)},
        "opt": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0]}]},
        "iters": 5000,
        "config_dict": {"_content": {"grounding_tokenizer_input": {"target": target}}},
    }
    return checkpoint, expected
