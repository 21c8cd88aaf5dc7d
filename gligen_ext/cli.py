"""The ``gligen-ext`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_common import quiet_libraries
from .cli_demo import add_demo_command
from .cli_eval import add_eval_command
from .cli_generate import add_generate_command

CONVERT_HELP = """\
sources (details and the known checkpoints: README, "Existing GLIGEN weights"):
  official GLIGEN checkpoint  torch.save dict with "model" (LDM key names); its config_dict is
                              OmegaConf, which gligen-ext does not unpickle: re-save "model" alone
  ComfyUI pruned GLIGEN file  fusers and position_net only, LDM key names
  diffusers GLIGEN UNet       folder with config.json (or a pipeline folder), weights file, hub id

example:
  gligen-ext convert masterful/gligen-1-4-generation-text-box --out boxes.safetensors --dtype fp16
"""


def run_convert(args: argparse.Namespace) -> int:
    """Convert GLIGEN weights (official, ComfyUI or diffusers) into a gligen-ext adapter file."""
    from .convert import convert_checkpoint, save_converted
    from .tokenizers import available_modalities

    if args.modality is not None and args.modality not in available_modalities():
        raise ValueError(f"--modality: expected one of {', '.join(available_modalities())}, got {args.modality!r}")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out: adapter files are .safetensors, got '{out}'")
    with quiet_libraries():
        converted = convert_checkpoint(args.source, modality=args.modality)
        paths = save_converted(converted, out, dtype=args.dtype)
    size = paths[0].stat().st_size / 1e6
    print(f"{converted.describe()} -> {paths[0]} ({size:.1f} MB)")
    for extra in paths[1:]:
        print(f"inpainting first conv (a 9-channel base-UNet weight) -> {extra}; load it with load_conv_in_weights")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write a gligen-ext box adapter in ComfyUI's GLIGEN format."""
    from .adapters import resolve_adapter_path
    from .export import export_comfyui

    path = export_comfyui(resolve_adapter_path(args.adapter), args.out)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, ComfyUI GLIGEN format: put it in ComfyUI/models/gligen/)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gligen-ext", description="GLIGEN-style grounding adapters for diffusers Stable Diffusion."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_demo_command(commands)
    add_generate_command(commands)
    add_eval_command(commands)

    convert = commands.add_parser(
        "convert",
        help="convert GLIGEN weights (official, ComfyUI, diffusers) into a gligen-ext adapter file",
        description="Convert GLIGEN weights into a gligen-ext adapter file. The source format and the modality are "
        "detected from the keys.",
        epilog=CONVERT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("source", help="checkpoint file (.pth/.ckpt/.bin/.safetensors), diffusers folder or hub id")
    convert.add_argument("--out", required=True, help="adapter file to write (.safetensors)")
    convert.add_argument(
        "--dtype", choices=("fp16", "bf16", "fp32"), help="precision of the file (default: as in the source)"
    )
    convert.add_argument(
        "--modality",
        help="override the detected modality, e.g. depth or canny (needed for those two when the checkpoint's "
        "config is gone)",
    )
    convert.set_defaults(handler=run_convert)

    export = commands.add_parser("export", help="write a gligen-ext adapter in another program's format")
    export.add_argument("adapter", help="gligen-ext adapter file (or folder, or hub id)")
    export.add_argument("--format", required=True, choices=("comfyui",), help="target format")
    export.add_argument("--out", required=True, help="file to write (.safetensors)")
    export.set_defaults(handler=run_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, KeyError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"gligen-ext: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
