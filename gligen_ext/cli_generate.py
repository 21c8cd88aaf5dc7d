"""``gligen-ext generate``: one image from a base model, grounding adapters, a prompt and a layout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

from .cli_common import load_base

LAYOUT_HELP = """\
layout JSON (every key optional; coordinates in [0, 1] unless "units" is "pixels"; file
paths relative to the JSON's folder; each modality needs an adapter trained for it):
  {"boxes": [{"phrase": "a red apple", "box": [x0, y0, x1, y1]},
             {"image": "reference.png", "box": [x0, y0, x1, y1]}],
   "keypoints": [{"points": [[x, y, v], ...]}],   a person: 17 COCO keypoints,
                                                  v = 0 absent, 1 occluded, 2 visible
   "depth": "depth.png",      also "hed", "canny", "normal" and "semantic" maps
   "units": "normalized"}     or "pixels"

example (more in inference/examples/README.md):
  gligen-ext generate --base stable-diffusion-v1-5/stable-diffusion-v1-5 \\
      --adapter boxes.safetensors --layout inference/examples/boxes.json \\
      --prompt "an apple and a cup on a table" --out out/apple.png --overlay
"""



def parse_beta(text: str) -> float | dict[str, float]:
    """``0.3``, or ``boxes=0.3,depth=0.7`` for a fraction per modality (GLIGEN's scheduled-sampling beta)."""
    from .tokenizers import available_modalities

    named = "=" in text
    betas = {}
    for modality, _, value in [item.partition("=") for item in text.split(",")] if named else [("", "", text)]:
        if named and (modality := modality.strip()) not in available_modalities():
            raise ValueError(
                f"--beta: expected a number or modality=value pairs separated by commas, got {text!r} (modalities: "
                f"{', '.join(available_modalities())})"
            )
        try:
            betas[modality] = float(value)
        except ValueError:
            betas[modality] = -1.0
        if not 0.0 <= betas[modality] <= 1.0:
            raise ValueError(f"--beta: {modality or 'the value'} must be a number in [0, 1], got {value.strip()!r}")
    return betas if named else betas[""]


def run_generate(args: argparse.Namespace) -> int:
    """Load a base model and adapters, generate one image for the prompt and layout, save it (and an overlay)."""
    import torch
    from PIL import Image

    from .adapters import DTYPES, read_adapter_config, resolve_adapter_path
    from .grounding import check_modalities_handled
    from .layout import parse_layout

    # Check every input before loading the (slow) base model.
    beta, out = parse_beta(args.beta), Path(args.out)
    if out.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out: cannot tell the image format from '{out}'; end it with .png, .jpg or .webp")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    try:  # a layout in pixels needs the image size, which may come from the base model
        pixels = json.loads(Path(args.layout).read_text(encoding="utf-8")).get("units") == "pixels"
    except (OSError, ValueError, AttributeError):
        pixels = False  # parse_layout says what is wrong with the file
    sized = not pixels or (args.width and args.height)
    layout = parse_layout(args.layout, width=args.width, height=args.height) if sized else None
    paths = [resolve_adapter_path(adapter) for adapter in args.adapter]
    handled = {
        str(path): SimpleNamespace(enabled=True, tokenizers=read_adapter_config(path)["modalities"]) for path in paths
    }
    if layout is not None:
        check_modalities_handled([layout], handled)

    pipe = load_base(args.base, DTYPES[args.dtype or ("fp16" if device == "cuda" else "fp32")])
    for i, path in enumerate(paths):
        pipe.load_grounding_adapter(path, adapter_name=f"adapter{i}" if len(paths) > 1 else None)
    pipe.to(device)
    upscaler = load_base(args.upscaler, pipe.unet.dtype, kind="upscaler").to(device) if args.upscaler else None
    default_size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = args.width or default_size, args.height or default_size
    output = pipe(
        args.prompt,
        layout=layout if layout is not None else parse_layout(args.layout, width=width, height=height),
        grounding_beta=beta,
        return_overlay=args.overlay,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        width=width,
        height=height,
        generator=torch.Generator().manual_seed(args.seed),
        upscaler=upscaler,
    )
    if any(output.nsfw_content_detected or []):
        print("gligen-ext: warning: the safety checker flagged the image; it is blacked out", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    output.images[0].save(out)
    print(out)
    if args.overlay:
        output.overlays[0].save(overlay := out.with_name(f"{out.stem}_overlay.png"))
        print(overlay)
    return 0


def add_generate_command(commands: argparse._SubParsersAction) -> None:
    """Register ``generate`` on the ``gligen-ext`` subcommands."""
    gen = commands.add_parser(
        "generate",
        help="generate an image that follows a layout (boxes, keypoints, depth, ...)",
        description="Generate one image with a Stable Diffusion base model and grounding adapters.",
        epilog=LAYOUT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    need = gen.add_argument_group("required arguments")
    need.add_argument("--base", required=True, help="base model: a Hugging Face hub id or a local diffusers folder")
    need.add_argument(
        "--adapter",
        required=True,
        action="append",
        help="grounding adapter: a .safetensors file, a folder holding one, or a hub id; repeat to load several "
        "(named adapter0, adapter1, ...; a single adapter keeps the name stored in its file)",
    )
    need.add_argument("--layout", required=True, help="layout JSON file (schema below)")
    need.add_argument("--prompt", required=True, help="text prompt")
    need.add_argument("--out", required=True, help="output image path; missing folders are created")
    gen.add_argument(
        "--overlay", action="store_true", help="also save the layout drawn on the image as <out stem>_overlay.png"
    )
    gen.add_argument("--negative-prompt", help="negative prompt (default: none)")
    gen.add_argument("--steps", type=int, default=30, help="denoising steps (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    gen.add_argument(
        "--beta",
        default="0.3",
        help="fraction of the steps that are grounded (GLIGEN's scheduled sampling): a number, or modality=value "
        "pairs such as boxes=0.3,depth=0.7 (default: %(default)s)",
    )
    gen.add_argument(
        "--guidance", type=float, default=7.5, help="classifier-free guidance scale (default: %(default)s)"
    )
    gen.add_argument("--width", type=int, help="image width in pixels (default: the base model's, e.g. 512)")
    gen.add_argument("--height", type=int, help="image height in pixels (default: the base model's, e.g. 512)")
    gen.add_argument(
        "--upscaler",
        help="x4/x2 diffusers upscaler (hub id or folder) run on the result with the same prompt (default: none)",
    )
    gen.add_argument("--device", choices=("cpu", "cuda"), help="where to run (default: cuda when available, else cpu)")
    gen.add_argument(
        "--dtype", choices=("fp32", "fp16", "bf16"), help="weights' precision (default: fp16 on cuda, fp32 on cpu)"
    )
    gen.set_defaults(handler=run_generate)
