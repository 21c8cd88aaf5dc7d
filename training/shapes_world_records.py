"""Shapes-world scenes as a training record table (``training/records.py``): image, caption, layout, depth.

    python -m training.shapes_world_records --scenes 20000 --seed 0 --out data/shapes_world/train
    python -m training.shapes_world_records --split heldout --scenes 512 --seed 0 --out data/shapes_world/heldout

Scene ``i`` of a table is :func:`gligen_ext.shapes_world.sample_scene` of seed ``seed + i`` (training) or
``HELDOUT_FIRST_SEED + seed + i`` (held out), so the two splits never share a scene and a table is the same bytes on
every build. Held-out scenes keep their objects apart (``max_overlap=0``): every object stays fully visible, so the
pixel metrics of :mod:`gligen_ext.shapes_world.metrics` are exact on them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from gligen_ext.shapes_world import Scene, sample_scene
from gligen_ext.shapes_world.evaluate import HELDOUT_SEED as BENCHMARK_HELDOUT_SEED

from .records import record_features

logger = logging.getLogger(__name__)

SPLITS = ("train", "heldout")
# scene-seed ranges never overlap: training [0, 10M), the grounding benchmark's layouts [10M, ...) and its FID
# references [20M, ...) (gligen_ext.shapes_world.evaluate), this held-out split [30M, ...)
TRAINING_SEED_LIMIT = BENCHMARK_HELDOUT_SEED
HELDOUT_FIRST_SEED = 30_000_000
FEATURES = record_features(["depth"])
# Training scenes overlap by at most this much of the smaller (grown) box: 43% of multi-object scenes still overlap,
# but captions stay true to the pixels. With full occlusion allowed, only 82% of training scenes show every object
# their caption names (54% of 4-object scenes), which caps what a base model can learn about following captions.
TRAIN_MAX_OVERLAP = 0.2


@dataclass(frozen=True)
class SceneOptions:
    """How the scenes of one table are drawn (see :func:`gligen_ext.shapes_world.scenes.sample_items`)."""

    size: int = 64
    max_objects: int = 4
    figure_prob: float = 0.3
    max_overlap: float = TRAIN_MAX_OVERLAP


def scene_seeds(split: str, *, seed: int, scenes: int) -> range:
    """The scene numbers of a table: ``scenes`` consecutive seeds from ``seed``, shifted for the held-out split."""
    if split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {SPLITS}")
    if seed < 0 or scenes < 1:
        raise ValueError(f"seed and scenes: need seed >= 0 and scenes >= 1, got seed={seed}, scenes={scenes}")
    if seed + scenes > TRAINING_SEED_LIMIT:
        raise ValueError(f"seed: seed + scenes must stay below {TRAINING_SEED_LIMIT:,}, the first scene the grounding "
                         "benchmark holds out")
    first = seed + (HELDOUT_FIRST_SEED if split == "heldout" else 0)
    return range(first, first + scenes)


def default_options(split: str, *, size: int = 64) -> SceneOptions:
    """Training scenes may overlap (occlusion is part of the world); held-out scenes keep their objects apart."""
    return SceneOptions(size=size, max_overlap=0.0 if split == "heldout" else TRAIN_MAX_OVERLAP)


def png_bytes(pixels: np.ndarray) -> bytes:
    """Lossless PNG of an (H, W) or (H, W, 3) uint8 array (deterministic: fixed zlib level, no metadata)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def scene_record(scene: Scene) -> dict[str, Any]:
    """One record of the training format: image and depth as PNG bytes, caption, normalised layout JSON."""
    layout = {"units": "normalized", **scene.layout()}
    return {
        "image": {"bytes": png_bytes(scene.image), "path": None},
        "caption": scene.caption,
        "layout": json.dumps(layout, separators=(",", ":")),
        "depth": {"bytes": png_bytes(scene.depth), "path": None},
    }


def scene_records(first: int, count: int, options: SceneOptions, *, progress: bool = True) -> Iterator[dict[str, Any]]:
    """Records of the scenes ``first``, ``first + 1``, ... (``count`` of them), in order, with a progress bar."""
    for seed in tqdm(range(first, first + count), desc="scenes", unit="scene", disable=not progress):
        scene = sample_scene(seed, size=options.size, max_objects=options.max_objects,
                             figure_prob=options.figure_prob, max_overlap=options.max_overlap)
        yield scene_record(scene)


def build_shapes_world(out: str | os.PathLike, *, scenes: int, seed: int = 0, split: str = "train",
                       options: SceneOptions | None = None, progress: bool = True) -> datasets.Dataset:
    """Write ``scenes`` scenes of ``split`` to ``out`` with ``save_to_disk`` and return the saved table."""
    seeds = scene_seeds(split, seed=seed, scenes=scenes)
    options = options or default_options(split)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the fingerprint names the content, so that the saved state (and so the whole folder) is the same on every build
    recipe = json.dumps({"split": split, "first": seeds.start, "scenes": scenes, **asdict(options)}, sort_keys=True)
    fingerprint = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".building-") as cache:
        # numbers, not a list, in gen_kwargs: datasets would split a list into one generator job per item
        jobs = {"first": seeds.start, "count": scenes, "options": options, "progress": progress}
        table = datasets.Dataset.from_generator(scene_records, gen_kwargs=jobs, features=FEATURES, cache_dir=cache,
                                                fingerprint=fingerprint)
        table.save_to_disk(str(out))
    logger.info("wrote %d %s scenes (seeds %d..%d) to %s", scenes, split, seeds.start, seeds.stop - 1, out)
    return datasets.load_from_disk(str(out))


def _parser() -> argparse.ArgumentParser:
    summary = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="python -m training.shapes_world_records", description=summary)
    parser.add_argument("--scenes", type=int, required=True, help="how many scenes")
    parser.add_argument("--seed", type=int, default=0, help="the first scene's number (default 0)")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="train: objects may overlap; heldout: disjoint seeds, objects kept apart")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--max-objects", type=int, default=4, help="objects per scene: 1 to this (default 4)")
    parser.add_argument("--figure-prob", type=float, default=0.3, help="chance of a stick figure (default 0.3)")
    parser.add_argument("--max-overlap", type=float, default=None,
                        help=f"largest overlap of two objects' boxes, as a fraction of the smaller "
                        f"(default: {TRAIN_MAX_OVERLAP} for train, 0 for heldout)")
    parser.add_argument("--out", required=True, help="output folder (save_to_disk)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = default_options(args.split, size=args.size)
    max_overlap = options.max_overlap if args.max_overlap is None else args.max_overlap
    options = SceneOptions(size=args.size, max_objects=args.max_objects, figure_prob=args.figure_prob,
                           max_overlap=max_overlap)
    try:
        table = build_shapes_world(args.out, scenes=args.scenes, seed=args.seed, split=args.split, options=options)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    print(f"wrote {len(table)} {args.split} scenes to {args.out} (columns: {', '.join(table.column_names)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
