"""Caption fidelity of a shapes-world base model, by object count, on several sets of held-out captions.

    python -m benchmarks.base_fidelity --base gligen_ext/shapes_world/weights/base
    python -m benchmarks.base_fidelity --base runs/shapes_base/model --guidance 3,4,6 --sets 3 --steps 25

Set k holds the held-out layouts from seed HELDOUT_SEED + k * 500,000 on, so set 0 is the grounding benchmark's.
Several sets show how much of a difference between two bases is sampling noise (about ±0.04 on 100 captions).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np
import torch

from gligen_ext.pipelines import GroundedStableDiffusionPipeline
from gligen_ext.shapes_world.evaluate import HELDOUT_SEED, BenchmarkOptions, generate_images, heldout_scenes
from gligen_ext.shapes_world.metrics import caption_fidelity
from gligen_ext.shapes_world.scenes import Shape

SET_STRIDE = 500_000


def measure(base: str, *, guidance: list[float], steps: int, sets: int, count: int) -> dict:
    """{guidance: {"sets": [fidelity per set], "mean": ..., "by_objects": {n: fidelity}}} for the base folder."""
    pipe = GroundedStableDiffusionPipeline.from_pretrained(base, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    scene_sets = [heldout_scenes(count, first_seed=HELDOUT_SEED + k * SET_STRIDE) for k in range(sets)]
    results = {}
    for scale in guidance:
        options = BenchmarkOptions(steps=steps, guidance_scale=scale)
        per_set, by_objects = [], defaultdict(list)
        for scenes in scene_sets:
            images = generate_images(pipe, scenes, None, options, beta=0.0)
            hits = [caption_fidelity(image, scene.caption) for image, scene in zip(images, scenes)]
            per_set.append(round(float(np.mean(hits)), 3))
            for scene, hit in zip(scenes, hits):
                by_objects[sum(isinstance(item, Shape) for item in scene.items)].append(hit)
        results[str(scale)] = {
            "sets": per_set,
            "mean": round(float(np.mean(per_set)), 3),
            "by_objects": {n: round(float(np.mean(v)), 3) for n, v in sorted(by_objects.items())},
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a diffusers folder, e.g. runs/shapes_base/model")
    parser.add_argument("--guidance", default="4", help="comma-separated guidance scales (default: 4)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (default: 25)")
    parser.add_argument("--sets", type=int, default=3, help="sets of held-out captions (default: 3)")
    parser.add_argument("--count", type=int, default=100, help="captions per set (default: 100)")
    args = parser.parse_args()
    torch.manual_seed(0)
    guidance = [float(value) for value in args.guidance.split(",")]
    print(json.dumps({"base": args.base, "steps": args.steps, "count": args.count,
                      "guidance": measure(args.base, guidance=guidance, steps=args.steps, sets=args.sets,
                                          count=args.count)}, indent=2))


if __name__ == "__main__":
    main()
