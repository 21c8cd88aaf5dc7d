"""``gligen-ext demo``: a grounded image from the shipped shapes-world model, offline, in seconds on a CPU."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

DEMO_SCENE = 10  # held-out layout 10: three objects, one of them a stick figure (see shapes_world.evaluate)
UPSCALE = 4  # the model draws 64 x 64; the saved pictures are enlarged (nearest) so that they can be looked at

DEMO_HELP = """\
the default layout is a held-out shapes-world scene (boxes with phrases, a stick figure's keypoints,
a depth map); it is also written to OUT/demo_layout.json, ready to edit and pass back with --layout.
phrases are "a <colour> <shape>" (red, green, blue, yellow; circle, square, triangle) or "a person".

examples:
  gligen-ext demo
  gligen-ext demo --layout out/demo_layout.json --prompt "a red circle and a blue square" --adapter boxes
"""


def write_layout_file(layout: dict, folder: Path) -> Path:
    """Save a layout dict holding a uint8 depth array as JSON + depth PNG (the form ``--layout`` reads)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    data = {key: value for key, value in layout.items() if key != "depth"}
    if "depth" in layout:
        Image.fromarray(layout["depth"]).save(folder / "demo_depth.png")
        data["depth"] = "demo_depth.png"
    path = folder / "demo_layout.json"
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def run_demo(args: argparse.Namespace) -> int:
    """Load the shipped base and an adapter, generate the layout (default: a held-out scene), save image + overlay."""
    import torch
    from diffusers.utils import logging as diffusers_logging
    from PIL import Image

    from .adapters import read_adapter_config
    from .cli_common import load_base
    from .layout import parse_layout
    from .shapes_world.evaluate import full_layout, heldout_scene
    from .shapes_world.shipped import adapter_file, base_folder
    from .viz import overlay_layout

    start = time.perf_counter()
    out = Path(args.out)
    adapter = adapter_file(args.adapter)  # fails fast, before anything is loaded
    diffusers_logging.disable_progress_bar()  # loading bars for a model that loads in a second
    pipe = load_base(str(base_folder()), torch.float32)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    scene = heldout_scene(DEMO_SCENE, size=size)
    layout_path = Path(args.layout) if args.layout else write_layout_file(full_layout(scene), out)
    layout = parse_layout(layout_path, width=size, height=size)
    layout, ignored = only_modalities(layout, read_adapter_config(adapter)["modalities"])
    prompt = args.prompt if args.prompt is not None else scene.caption if not args.layout else _caption(layout)
    pipe.load_grounding_adapter(adapter, adapter_name=args.adapter)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter()

    result = pipe(prompt, layout=layout, grounding_beta=args.beta, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, height=size, width=size,
                  generator=torch.Generator().manual_seed(args.seed))
    image = result.images[0]
    big = image.resize((size * UPSCALE,) * 2, Image.Resampling.NEAREST)
    out.mkdir(parents=True, exist_ok=True)
    image_path, overlay_path = out / "demo.png", out / "demo_overlay.png"
    big.save(image_path)
    overlay_layout(big, layout).save(overlay_path)
    print(f"prompt: {prompt!r}; layout: {layout_path}; adapter: {args.adapter} ({adapter.name})")
    if ignored:
        print(f"the {args.adapter} adapter does not read the layout's {', '.join(ignored)}; left out")
    print(f"generated {size}x{size} in {time.perf_counter() - loaded:.1f} s ({args.steps} steps, CPU); "
          f"{time.perf_counter() - start:.1f} s in all")
    print(image_path)
    print(overlay_path)
    return 0


def only_modalities(layout, modalities: list[str]):
    """(the layout without what an adapter of ``modalities`` cannot read, the names of what was left out)."""
    ignored = [name for name, present in (("boxes", layout.boxes), ("keypoints", layout.keypoints)) if present
               and name not in modalities] + [name for name in layout.maps if name not in modalities]
    kept = dataclasses.replace(
        layout, boxes=layout.boxes if "boxes" in modalities else [],
        keypoints=layout.keypoints if "keypoints" in modalities else [],
        maps={name: value for name, value in layout.maps.items() if name in modalities})
    return kept, ignored


def _caption(layout) -> str:
    """A caption naming the layout's phrases left to right, as the shapes world's captions do."""
    boxes = sorted(layout.boxes, key=lambda box: box.box[0])
    phrases = [box.phrase for box in boxes if box.phrase] or ["a person"] * len(layout.keypoints)
    if not phrases:
        return ""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    """Register ``demo`` on the ``gligen-ext`` subcommands."""
    from .shapes_world.shipped import ADAPTER_NAMES

    demo = commands.add_parser(
        "demo",
        help="generate a grounded image with the shipped shapes-world model (offline, seconds on a CPU)",
        description="Generate an image that follows a layout with the shapes-world base model and a grounding "
        "adapter shipped in the package; writes the image and its layout overlay.",
        epilog=DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--layout", help="layout JSON (default: a held-out scene, written to OUT/demo_layout.json)")
    demo.add_argument("--prompt", help="text prompt (default: the layout's phrases, left to right)")
    demo.add_argument("--adapter", default="multi", choices=ADAPTER_NAMES,
                      help="shipped adapter (default: %(default)s, which reads boxes, keypoints and depth)")
    demo.add_argument("--out", default="out", help="folder for the pictures (default: %(default)s)")
    demo.add_argument("--steps", type=int, default=25, help="denoising steps (default: %(default)s)")
    demo.add_argument("--beta", type=float, default=1.0,
                      help="fraction of the steps with grounding on (default: %(default)s)")
    demo.add_argument("--guidance", type=float, default=4.0, help="guidance scale (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.set_defaults(handler=run_demo)
