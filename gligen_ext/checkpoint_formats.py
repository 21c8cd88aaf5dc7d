"""Read GLIGEN weights in the formats they are published in, safely, with diffusers' key names.

Formats:

* **official** GLIGEN checkpoints: a ``torch.save`` dict whose ``model`` entry is the whole UNet with LDM key names
  (``input_blocks.1.1.transformer_blocks.0.fuser.*``, ``position_net.*``, ``downsample_net.layers.*``), next to
  ``text_encoder``, ``autoencoder``, optimiser state and ``config_dict``; or that ``model`` dict saved on its own;
* **ComfyUI** pruned GLIGEN files: only the fusers (LDM names) and ``position_net.*``, as ``comfy/gligen.py`` reads
  them (fuser keys with or without the ``model.diffusion_model.`` prefix, ``position_net.*`` without it);
* **diffusers** GLIGEN UNets (``attention_type="gated"`` or ``"gated-text-image"``): a folder with ``config.json``, a
  pipeline folder with ``unet/``, a single weights file, or a hub id.

Nothing is unpickled beyond tensors and plain containers (``torch.load(..., weights_only=True)``). LDM names are
turned into diffusers names by diffusers' own converter (``convert_ldm_unet_checkpoint``), not by a table of ours.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .adapters import METADATA_KEY

logger = logging.getLogger(__name__)

LDM_PREFIX = "model.diffusion_model."
LDM_BLOCKS = ("input_blocks.", "middle_block.", "output_blocks.")
DIFFUSERS_BLOCKS = ("down_blocks.", "mid_block.", "up_blocks.")
# entries of an official checkpoint other than ``model``: the frozen text encoder and VAE, the diffusion schedule,
# training state and the training config; none of them belongs to a grounding adapter
OFFICIAL_IGNORED_ENTRIES = frozenset(
    {"text_encoder", "autoencoder", "diffusion", "opt", "scheduler", "iters", "config_dict", "ema", "scaler"}
)
# top-level prefixes of single-file LDM checkpoints (model.diffusion_model.* is the UNet itself)
LDM_IGNORED_PREFIXES = ("first_stage_model.", "cond_stage_model.", "model_ema.")
# GLIGEN's grounding-input module names (grounding_input/<name>_grounding_tokinzer_input.py) -> gligen-ext modality
OFFICIAL_MODALITIES = {
    "text": "boxes",
    "text_image": "image_boxes",
    "keypoint": "keypoints",
    "depth": "depth",
    "canny": "canny",
    "hed": "hed",
    "normal": "normal",
    "sem": "semantic",
}
# re-saves an official checkpoint's UNet weights alone; documented in the README as three lines
RESAVE_LINES = (
    "import torch",
    'ckpt = torch.load("checkpoint.pth", map_location="cpu", weights_only=False)',
    'torch.save({k: v for k, v in ckpt["model"].items()}, "model_only.pth")',
)
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


class ConversionError(ValueError):
    """GLIGEN weights cannot be read or converted; the message names the file or key and the fix."""


@dataclass
class SourceWeights:
    """A checkpoint's UNet-side tensors with diffusers key names, and what is known about where they came from.

    ``tensors``: base UNet keys (``conv_in.weight``, ...), fusers (``<block>.fuser.*``), ``position_net.*`` and, for
    official spatial checkpoints, ``downsample_net.*``. ``unet_config``: diffusers ``config.json`` if the source has
    one. ``grounding_hint``: the official grounding-input name from ``config_dict`` (``"depth"``, ...), if readable.
    """

    kind: str  # "official", "comfyui" or "diffusers"
    label: str  # what to call it in messages, e.g. "official GLIGEN checkpoint"
    tensors: dict[str, torch.Tensor]
    unet_config: dict[str, Any] | None = None
    grounding_hint: str | None = None


def read_source(source: str | Path) -> SourceWeights:
    """Read a checkpoint file, a diffusers folder or a hub id (``owner/name`` or ``owner/name/path/in/repo``)."""
    path = Path(source)
    if path.is_dir():
        return _read_diffusers_folder(path)
    if path.is_file():
        weights = _read_file(path)
        if weights.kind == "diffusers" and (path.parent / "config.json").is_file():
            return _attach_config(weights, path.parent / "config.json")  # its folder says how it is built
        return weights
    return read_source(download_from_hub(str(source)))


def download_from_hub(text: str) -> Path:
    """Fetch a diffusers UNet (folder) or one file from the Hugging Face hub; ConversionError when it cannot."""
    parts = text.strip("/").split("/")
    if len(parts) < 2 or text.startswith((".", "/")) or any(not p for p in parts):
        raise ConversionError(f"{text!r} is neither a local file or folder nor a Hugging Face hub id (owner/name)")
    from huggingface_hub import errors, hf_hub_download

    missing = getattr(errors, "RemoteEntryNotFoundError", errors.EntryNotFoundError)
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        if filename:
            return Path(hf_hub_download(repo_id, filename))
        for folder in ("unet/", ""):
            try:
                config = Path(hf_hub_download(repo_id, f"{folder}config.json"))
            except missing:
                continue
            for name in WEIGHT_NAMES:
                try:
                    hf_hub_download(repo_id, folder + name)
                    return config.parent
                except missing:
                    continue
        # the official gligen/gligen-* repos hold the training checkpoint under this name
        return Path(hf_hub_download(repo_id, "diffusion_pytorch_model.bin"))
    except Exception as error:  # offline mode, unknown repo, gated repo, network: all mean "cannot get it"
        from huggingface_hub import constants

        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else type(error).__name__
        raise ConversionError(
            f"{text!r} is not a local file or folder and cannot be fetched from the Hugging Face hub ({reason}); "
            "download it and pass the local path"
        ) from error


def load_state_file(path: Path) -> dict[str, Any]:
    """A ``.safetensors`` file or a ``torch.save`` file, loaded without unpickling arbitrary objects."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                if METADATA_KEY in (handle.metadata() or {}):
                    raise ConversionError(
                        f"{path.name} is already a gligen-ext adapter; load it with load_grounding_adapter"
                    )
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            if isinstance(error, ConversionError):
                raise
            raise ConversionError(f"{path.name} is not a readable safetensors file (truncated or corrupt?)") from error
    try:
        # memory-mapped, so a 7 GB training checkpoint costs only the adapter tensors that are read from it
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        found = re.findall(r"GLOBAL ([\w.]+)", str(error))
        if not found:
            raise ConversionError(
                f"{path.name} is not a readable PyTorch checkpoint (corrupt, or another format)"
            ) from error
        raise ConversionError(
            f"{path.name} holds pickled Python objects (weights_only refused class {found[0]}); gligen-ext never "
            "unpickles those, because unpickling can run arbitrary code. Official GLIGEN checkpoints store their "
            "config this way. Only if you trust the file, re-save its UNet weights alone with "
            f"python -c '{'; '.join(RESAVE_LINES)}' "
            "and convert model_only.pth (add --modality depth or --modality canny for those checkpoints)"
        ) from error
    except Exception as error:  # torch raises RuntimeError, KeyError, EOFError ... for foreign or torn files
        raise ConversionError(
            f"{path.name} is not a readable PyTorch checkpoint (truncated, corrupt, or another format): "
            f"{type(error).__name__}"
        ) from error


def ldm_to_diffusers_names(keys: Iterable[str], layers_per_block: int) -> dict[str, str]:
    """LDM UNet key -> diffusers key, as ``diffusers.loaders.single_file_utils.convert_ldm_unet_checkpoint`` names it.

    The converter only moves values between names, so it is given the names themselves as values. It sizes its
    loops by the block indices it sees, so one placeholder per index keeps partial key sets (fusers only) whole.
    Keys it does not know are left out of the result.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    keys = list(keys)
    checkpoint: dict[str, Any] = {LDM_PREFIX + key: key for key in keys}
    for block in LDM_BLOCKS:
        indices = [int(k[len(block) :].split(".", 1)[0]) for k in keys if k.startswith(block)]
        for index in range(max(indices, default=-1) + 1):
            checkpoint.setdefault(f"{LDM_PREFIX}{block}{index}.placeholder", None)
    converted = convert_ldm_unet_checkpoint(checkpoint, {"layers_per_block": layers_per_block})
    return {ldm: diffusers for diffusers, ldm in converted.items() if ldm is not None}


def ldm_block_prefixes(layers_per_block: int, num_levels: int) -> dict[str, str]:
    """diffusers attention prefix (``down_blocks.0.attentions.0``) -> LDM prefix (``input_blocks.1.1``), from the
    converter, for a UNet with ``num_levels`` resolutions."""
    per_level = layers_per_block + 1
    probes = [f"input_blocks.{i}.1.probe" for i in range(1, per_level * num_levels)]
    probes += ["middle_block.1.probe"] + [f"output_blocks.{i}.1.probe" for i in range(per_level * num_levels)]
    names = ldm_to_diffusers_names(probes, layers_per_block)
    return {names[p].removesuffix(".probe"): p.removesuffix(".probe") for p in probes if p in names}


def _read_file(path: Path) -> SourceWeights:
    state = load_state_file(path)
    if not isinstance(state, dict):
        raise ConversionError(f"{path.name} holds a {type(state).__name__}, not a dict of tensors")
    if isinstance(state.get("state_dict"), dict) and "model" not in state:
        state = state["state_dict"]  # PyTorch Lightning's wrapping of a single-file LDM checkpoint
    if isinstance(state.get("model"), dict):
        unknown = sorted(set(state) - OFFICIAL_IGNORED_ENTRIES - {"model"})
        if unknown:
            raise ConversionError(
                f"{path.name}: unknown top-level entries {unknown} next to 'model'; an official GLIGEN checkpoint "
                f"holds only {sorted(OFFICIAL_IGNORED_ENTRIES | {'model'})}. Re-save the 'model' dict alone"
            )
        skipped = sorted(set(state) & OFFICIAL_IGNORED_ENTRIES)
        logger.info("%s: using 'model'; skipping %s (not part of a grounding adapter)", path.name, skipped)
        hint = official_grounding_name(state.get("config_dict"))
        return _from_flat(path, state["model"], grounding_hint=hint, official=True)
    return _from_flat(path, state)


def _from_flat(
    path: Path, state: dict[str, Any], *, grounding_hint: str | None = None, official: bool = False
) -> SourceWeights:
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"{path.name}: entries {not_tensors[:5]} are not tensors; expected a UNet state dict")
    tensors = {k: v for k, v in state.items() if not k.startswith(LDM_IGNORED_PREFIXES)}
    if len(tensors) < len(state):
        logger.info("%s: skipping %d VAE, text-encoder and EMA tensors", path.name, len(state) - len(tensors))
    tensors = {k.removeprefix(LDM_PREFIX): v for k, v in tensors.items()}
    if any(k.startswith(LDM_BLOCKS) for k in tensors):
        full = "time_embed.0.weight" in tensors
        kind = "official" if official or full else "comfyui"
        label = "official GLIGEN checkpoint" if kind == "official" else "pruned GLIGEN file (ComfyUI format)"
        return SourceWeights(kind, label, _rename_ldm(path, tensors), grounding_hint=grounding_hint)
    if any(k.startswith(DIFFUSERS_BLOCKS) for k in tensors):
        return SourceWeights("diffusers", "diffusers GLIGEN UNet", tensors)
    raise ConversionError(
        f"{path.name} has no UNet block keys (input_blocks.* or down_blocks.*); it is not a GLIGEN checkpoint"
    )


def _rename_ldm(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM names -> diffusers names; ``position_net.*`` and ``downsample_net.*`` keep theirs."""
    own = {k: v for k, v in tensors.items() if k.startswith(("position_net.", "downsample_net."))}
    unet = {k: v for k, v in tensors.items() if k not in own}
    names = ldm_to_diffusers_names(unet, infer_ldm_layers_per_block(unet))
    unknown = sorted(set(unet) - set(names))
    if unknown:
        raise ConversionError(f"{path.name}: keys {unknown[:8]} are not part of a Stable Diffusion UNet or GLIGEN")
    return {names[k]: v for k, v in unet.items()} | own


def infer_ldm_layers_per_block(keys: Iterable[str]) -> int:
    """Resnets per level: from the first downsampler's index, else from the fusers' first gap, else SD's 2."""
    keys = list(keys)
    ops = [int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))]
    if ops:
        return min(ops) - 1
    fused = {int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.1\..*\.fuser\.", k))}
    if 1 in fused:
        return next(i for i in range(1, max(fused) + 2) if i not in fused) - 1
    return 2


def official_grounding_name(config_dict: Any) -> str | None:
    """The grounding input named in an official ``config_dict`` (e.g. ``"depth"``), if it is readable."""
    found = set()

    def visit(value: Any, depth: int = 0) -> None:
        if isinstance(value, str):
            match = re.search(r"(\w+?)_grounding_(?:tokinzer_input|net)\b", value)
            if match and match.group(1) in OFFICIAL_MODALITIES:
                found.add(OFFICIAL_MODALITIES[match.group(1)])
        elif isinstance(value, dict) and depth < 6:
            for item in value.values():
                visit(item, depth + 1)

    visit(config_dict)
    return found.pop() if len(found) == 1 else None


def _read_diffusers_folder(folder: Path) -> SourceWeights:
    if (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"folder '{folder}' has no config.json; it is not a diffusers UNet or pipeline folder")
    weights = next((folder / name for name in WEIGHT_NAMES if (folder / name).is_file()), None)
    if weights is None:
        raise ConversionError(f"folder '{folder}' holds none of {', '.join(WEIGHT_NAMES)}")
    source = _from_flat(weights, load_state_file(weights))
    if source.kind != "diffusers":
        raise ConversionError(f"{weights.name} has LDM key names, but its folder says it is a diffusers UNet")
    return _attach_config(source, config_path)


def _attach_config(source: SourceWeights, config_path: Path) -> SourceWeights:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConversionError(f"{config_path} is not valid JSON") from error
    source.unet_config = config
    source.label = f"diffusers GLIGEN UNet (attention_type {config.get('attention_type', 'default')!r})"
    return source
