"""The grounding benchmark: generate held-out shapes-world layouts with each setting and score the pixels.

Settings: the base model without grounding, each adapter alone, and a ``grounding_beta`` sweep on one adapter (the
multi-modality one when loaded). Every setting draws layout ``i`` from the same initial noise (generator seed
``seed + i``), so rows differ only by their grounding. Held-out layouts and the real reference images for FID come
from seed ranges that training never uses (training scenes must use seeds below :data:`HELDOUT_SEED`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..adapters import resolve_adapter_path
from ..inject import grounding_adapters
from .frechet import FeatureNetwork, feature_network, frechet_distance
from .scenes import Scene, sample_scene
from .scoring import SettingScores, score_images

logger = logging.getLogger(__name__)

HELDOUT_SEED = 10_000_000  # layout i is scene HELDOUT_SEED + i; training draws scenes below this
REFERENCE_SEED = 20_000_000  # the real images FID compares with: another disjoint range
FIGURE_EVERY = 3  # layout i holds a stick figure when i % 3 == 1: each object count gets figures as the set grows


class BenchmarkOptionError(ValueError):
    """A benchmark option is out of range."""


@dataclass(frozen=True)
class BenchmarkOptions:
    """How the benchmark samples and scores; every field is recorded with the results."""

    layouts: int = 100
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    beta: float = 1.0  # grounding_beta of the per-adapter rows: grounded at every step
    beta_sweep: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0)
    sweep_adapter: str | None = None  # default: "multi" when loaded, else the first adapter
    pck_radius: float = 3.0  # pixels: 4.7% of the side at 64 x 64
    reference_images: int = 1000
    batch_size: int = 8
    examples: int = 4  # example images kept per setting for the picture

    def __post_init__(self) -> None:
        for name in ("layouts", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise BenchmarkOptionError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if self.layouts < 2 or self.reference_images < 2:
            raise BenchmarkOptionError(
                f"layouts and reference_images: FID needs at least 2 of each, got {self.layouts} and "
                f"{self.reference_images}"
            )
        for beta in (self.beta, *self.beta_sweep):
            if not 0.0 <= beta <= 1.0:
                raise BenchmarkOptionError(f"beta: {beta} is not a fraction of the steps; give values in [0, 1]")
        if self.pck_radius <= 0 or self.examples < 0:
            raise BenchmarkOptionError(
                f"pck_radius must be > 0 and examples >= 0, got {self.pck_radius} and {self.examples}"
            )


def heldout_scene(index: int, *, size: int = 64, first_seed: int = HELDOUT_SEED) -> Scene:
    """Held-out layout ``index``: 1 + index % 4 non-overlapping objects (every one stays visible to the metrics),
    the first a stick figure when index % 3 == 1."""
    return sample_scene(
        first_seed + index,
        size=size,
        num_objects=1 + index % 4,
        figure_prob=1.0 if index % FIGURE_EVERY == 1 else 0.0,
        max_overlap=0.0,
    )


def heldout_scenes(count: int, *, size: int = 64, first_seed: int = HELDOUT_SEED) -> list[Scene]:
    """The first ``count`` held-out layouts (their images are what a perfect model would draw)."""
    return [heldout_scene(i, size=size, first_seed=first_seed) for i in range(count)]


def reference_images(count: int, *, size: int = 64) -> np.ndarray:
    """(count, size, size, 3) uint8: real images drawn like the held-out layouts, from :data:`REFERENCE_SEED` on."""
    return np.stack([scene.image for scene in heldout_scenes(count, size=size, first_seed=REFERENCE_SEED)])


def full_layout(scene: Scene) -> dict:
    """The scene's boxes, keypoints and depth map, as a layout dict."""
    return {**scene.layout(), "depth": scene.depth}


def layout_for(scene: Scene, modalities: Sequence[str]) -> dict:
    """The part of the scene's layout an adapter for ``modalities`` reads (layout keys are modality names here)."""
    return {key: value for key, value in full_layout(scene).items() if key in modalities}


@dataclass
class SettingResult:
    """One row of the benchmark: ``adapter`` None is the base without grounding."""

    name: str
    adapter: str | None
    beta: float | None
    scores: SettingScores
    examples: list[np.ndarray] = field(default_factory=list, repr=False)  # (H, W, 3) uint8, the first layouts


@dataclass
class BenchmarkResult:
    """Rows in order (base, adapters, sweep), the options, the layouts and where the numbers came from."""

    settings: list[SettingResult]
    options: BenchmarkOptions
    scenes: list[Scene] = field(repr=False)
    provenance: dict[str, Any]

    def setting(self, name: str) -> SettingResult:
        for row in self.settings:
            if row.name == name:
                return row
        raise KeyError(f"no setting named {name!r}; the settings are {', '.join(r.name for r in self.settings)}")

    def sweep(self) -> list[SettingResult]:
        """The grounding_beta sweep's rows, in the order of the options' values."""
        adapter = self.provenance["sweep_adapter"]
        rows = {row.beta: row for row in self.settings if row.adapter == adapter}
        return [rows[beta] for beta in self.options.beta_sweep if beta in rows]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the images, JSON-ready."""
        return {
            "provenance": self.provenance,
            "options": asdict(self.options),
            "settings": [
                {"name": r.name, "adapter": r.adapter, "beta": r.beta, **r.scores.to_dict()} for r in self.settings
            ],
        }


def sweep_name(adapter: str, beta: float) -> str:
    return f"{adapter} β={beta:g}"


def adapter_digest(path: str | os.PathLike) -> str:
    """The adapter file's SHA-256 (a folder: the adapter file in it), first 12 hex digits: which weights made the
    numbers."""
    digest = hashlib.sha256()
    with open(resolve_adapter_path(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def generate_images(
    pipe: Any, scenes: Sequence[Scene], layouts: Sequence[dict] | None, options: BenchmarkOptions, *, beta: float
) -> list[np.ndarray]:
    """Images (H, W, 3) uint8 for the scenes' captions, grounded on ``layouts`` (None: no grounding)."""
    images = []
    for start in range(0, len(scenes), options.batch_size):
        batch = scenes[start : start + options.batch_size]
        size = batch[0].image.shape[0]
        grounding = {} if layouts is None else {"layout": list(layouts[start : start + len(batch)])}
        output = pipe(
            [scene.caption for scene in batch],
            num_inference_steps=options.steps,
            guidance_scale=options.guidance_scale,
            generator=[torch.Generator().manual_seed(options.seed + start + i) for i in range(len(batch))],
            height=size,
            width=size,
            output_type="np",
            grounding_beta=beta,
            **grounding,
        )
        images += [(np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8) for image in output.images]
    return images


def run_benchmark(
    pipe: Any,
    adapters: Mapping[str, str | os.PathLike],
    *,
    options: BenchmarkOptions | None = None,
    features: FeatureNetwork | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> BenchmarkResult:
    """Load ``adapters`` (name -> file) into ``pipe``, a grounded SD pipeline without any, and run every setting.

    ``features`` defaults to :func:`.frechet.feature_network` on the pipeline's VAE; ``provenance`` (e.g. the
    command line) is added to the result's record.
    """
    options = options or BenchmarkOptions()
    names = list(adapters)
    sweep_adapter = options.sweep_adapter or ("multi" if "multi" in names else names[0] if names else None)
    if sweep_adapter is not None and sweep_adapter not in names:
        raise BenchmarkOptionError(f"sweep_adapter: {sweep_adapter!r} is not among the adapters ({', '.join(names)})")
    for name, path in adapters.items():
        pipe.load_grounding_adapter(path, adapter_name=name)
    modalities = {name: list(adapter.tokenizers) for name, adapter in grounding_adapters(pipe.unet).items()}
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    scenes = heldout_scenes(options.layouts, size=size)
    features = features or feature_network(pipe.vae)
    reference = features(reference_images(options.reference_images, size=size))

    plan = [("base", None, None)] + [(name, name, options.beta) for name in names]
    if sweep_adapter is not None:
        plan += [(sweep_name(sweep_adapter, b), sweep_adapter, b) for b in options.beta_sweep if b != options.beta]
    rows = []
    for name, adapter, beta in plan:
        start = time.perf_counter()
        pipe.set_grounding_adapters([adapter] if adapter else [])
        layouts = None if adapter is None else [layout_for(scene, modalities[adapter]) for scene in scenes]
        images = generate_images(pipe, scenes, layouts, options, beta=1.0 if beta is None else beta)
        scores = score_images(images, scenes, pck_radius=options.pck_radius)
        scores.fid = frechet_distance(features(np.stack(images)), reference)
        rows.append(SettingResult(name, adapter, beta, scores, images[: options.examples]))
        logger.info("%s: %d images scored in %.1f s", name, len(images), time.perf_counter() - start)
    pipe.set_grounding_adapters(names)

    record = {
        "gligen_ext_version": __version__,
        "image_size": size,
        "scheduler": type(pipe.scheduler).__name__,
        "layout_seeds": [HELDOUT_SEED, HELDOUT_SEED + options.layouts - 1],
        "reference_seeds": [REFERENCE_SEED, REFERENCE_SEED + options.reference_images - 1],
        "adapters": {
            name: {"file": str(file), "modalities": modalities[name], "sha256": adapter_digest(file)}
            for name, file in adapters.items()
        },
        "sweep_adapter": sweep_adapter,
        "fid_features": features.name,
        "fid_description": features.description,
        **(provenance or {}),
    }
    return BenchmarkResult(rows, options, scenes, record)

