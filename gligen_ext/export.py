"""Export gligen-ext adapters to other programs' GLIGEN formats (:mod:`gligen_ext.convert` goes the other way).

ComfyUI (``comfy/gligen.py``) finds fusers by their LDM block names (keys containing ``input_blocks.N.``,
``middle_block.N.`` or ``output_blocks.N.`` and ``.fuser.``, in that order) and reads ``position_net.*`` as GLIGEN's
box-and-phrase position net; that is the only position net it knows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from safetensors import safe_open

from .adapters import read_adapter_config, write_safetensors
from .checkpoint_formats import ConversionError, ldm_block_prefixes


def export_comfyui(adapter_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a gligen-ext box adapter as a ComfyUI GLIGEN file (``models/gligen/``): LDM fuser keys
    (``input_blocks.1.1.transformer_blocks.0.fuser.*``) and ``position_net.*``, as ``comfy/gligen.py`` reads them.

    ComfyUI's loader knows only GLIGEN's box-and-phrase position net; other modalities raise ConversionError.
    """
    path = Path(adapter_path)
    config = read_adapter_config(path)
    modalities = list(config["modalities"])
    if modalities != ["boxes"]:
        raise ConversionError(
            f"{path.name} grounds {', '.join(modalities)}; ComfyUI's GLIGEN loader supports only boxes with text "
            "phrases (a single-modality 'boxes' adapter)"
        )
    if config.get("converted_from", {}).get("inpainting"):
        raise ConversionError(
            f"{path.name} is a GLIGEN inpainting adapter: it needs its 9-channel first conv, which ComfyUI's GLIGEN "
            "loader does not carry; export a generation (text-box) adapter"
        )
    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    attentions = {k.split(".transformer_blocks.")[0] for k in tensors if ".fuser." in k}
    rows = [
        (m.group(1), int(m.group(2)), int(m.group(3)))
        for a in attentions
        if (m := re.match(r"(down|up)_blocks\.(\d+)\.attentions\.(\d+)$", a))
    ]
    per_block = max([r + 1 for kind, _, r in rows if kind == "down"] + [r for kind, _, r in rows if kind == "up"])
    prefixes = ldm_block_prefixes(per_block, max(level for _, level, _ in rows) + 1)
    exported = {}
    for key, value in tensors.items():
        attention, _, rest = key.partition(".transformer_blocks.")
        if not rest:
            exported[key] = value  # position_net.*: ComfyUI reads these names as they are
        elif attention in prefixes and rest.startswith("0.fuser."):
            exported[f"{prefixes[attention]}.transformer_blocks.{rest}"] = value
        else:
            raise ConversionError(
                f"{key}: ComfyUI's loader needs one transformer block per attention, at an SD layout"
            )
    return write_safetensors(Path(out), exported, {})
