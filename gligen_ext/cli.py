"""The ``gligen-ext`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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


CONVERT_HELP = """\
sources (details and the known checkpoints: README, "Existing GLIGEN weights"):
  official GLIGEN checkpoint  torch.save dict with "model" (LDM key names); its config_dict is
                              OmegaConf, which gligen-ext does not unpickle: re-save "model" alone
  ComfyUI pruned GLIGEN file  fusers and position_net only, LDM key names
  diffusers GLIGEN UNet       folder with config.json (or a pipeline folder), weights file, hub id

example:
  gligen-ext convert masterful/gligen-1-4-generation-text-box --out boxes.safetensors --dtype fp16
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


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Hold back diffusers' and transformers' warnings (hub retries, renames) so that errors stay one line."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(module, module.get_verbosity()) for module in (diffusers_logging, transformers_logging)]
    for module, _ in saved:
        module.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # e.g. diffusers' torch_dtype -> dtype rename
            yield
    finally:
        for module, level in saved:
            module.set_verbosity(level)


def load_base(base: str, torch_dtype: Any, *, kind: str = "base model") -> Any:
    """``from_pretrained`` (a grounded SD pipeline, or for ``kind="upscaler"`` whatever pipeline the folder names)
    with a one-line error for a model it cannot find."""
    with quiet_libraries():
        from diffusers import DiffusionPipeline

        from .pipelines import GroundedStableDiffusionPipeline

        loader = DiffusionPipeline if kind == "upscaler" else GroundedStableDiffusionPipeline
        try:
            return loader.from_pretrained(base, torch_dtype=torch_dtype)
        except (OSError, ValueError) as error:  # huggingface_hub's errors are OSErrors
            reason = "not a local diffusers folder and not reachable on the Hugging Face hub"
            raise ValueError(f"cannot load {kind} '{base}': {error if Path(base).is_dir() else reason}") from error


def run_demo(args: argparse.Namespace) -> int:
    """Offline walk-through on tiny components: inject a box adapter, save it, load it, run a grounded forward."""
    import torch

    from . import (
        GroundingEncoders,
        PhraseEncoder,
        add_grounding_adapter,
        load_grounding_adapter,
        prepare_grounding,
        save_grounding_adapter,
    )
    from .testing import tiny_text_encoder, tiny_tokenizer, tiny_unet

    start = time.perf_counter()
    workdir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gligen-ext-demo-"))
    tokenizer, text_encoder = tiny_tokenizer(workdir / "tokenizer"), tiny_text_encoder()
    unet = tiny_unet()
    base_params = sum(p.numel() for p in unet.parameters())
    print(f"built a tiny SD UNet from its config: {base_params:,} parameters")

    add_grounding_adapter(unet, "boxes")
    added = sum(p.numel() for p in unet.parameters()) - base_params
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    print(f"injected a box adapter: {added:,} new parameters, {trainable:,} trainable (the base is frozen)")

    path = save_grounding_adapter(unet, workdir / "boxes.safetensors", dtype="fp16")
    print(f"saved the adapter alone to {path} ({path.stat().st_size / 1024:.0f} KiB, fp16)")

    fresh = tiny_unet()
    name = load_grounding_adapter(fresh, path)
    layout = {
        "boxes": [
            {"phrase": "a red apple", "box": [0.1, 0.2, 0.45, 0.7]},
            {"phrase": "a blue cup", "box": [0.55, 0.3, 0.9, 0.8]},
        ]
    }
    encoders = GroundingEncoders(encode_phrases=PhraseEncoder(tokenizer, text_encoder))
    grounding = prepare_grounding(fresh, layout, encoders, batch_size=1)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 16, 16, generator=generator)
    context = text_encoder(tokenizer(["an apple and a cup"], padding="max_length", return_tensors="pt").input_ids)[0]
    with torch.no_grad():
        base = tiny_unet()(latents, 500, context).sample
        grounded = fresh(latents, 500, context, cross_attention_kwargs={"gligen": grounding}).sample
    print(f"loaded it as adapter {name!r} onto a fresh UNet and ran a forward pass with 2 boxes")
    print(f"noise prediction {tuple(grounded.shape)}; max |grounded - base| = {(grounded - base).abs().max():.1e}")
    print("  (0 is expected: a new adapter's gates start closed, so it is an exact identity until trained)")
    print(f"done in {time.perf_counter() - start:.1f} s; files in {workdir}")
    return 0


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
    demo = commands.add_parser("demo", help="run the offline demo on tiny components")
    demo.add_argument("--out", help="folder for the demo's files (default: a temporary folder)")
    demo.set_defaults(handler=run_demo)

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
