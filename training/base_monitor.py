"""Judging a base model by its pixels: reconstructions of the VAE, and images generated for held-out captions
scored by :func:`gligen_ext.shapes_world.metrics.caption_fidelity` (every colour and shape the caption names is
detected), with sample grids. A falling loss alone says little: early samples are noise while the loss looks fine.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from PIL import Image

from gligen_ext.shapes_world import COLOURS
from gligen_ext.shapes_world.metrics import caption_fidelity, detect_objects
from gligen_ext.viz import image_grid

logger = logging.getLogger(__name__)
_COLOUR_WORDS = {colour: re.compile(rf"\b{colour}\b") for colour in COLOURS}


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def fidelity_scores(images: Sequence[np.ndarray], captions: Sequence[str]) -> dict[str, float]:
    """``caption_fidelity``: the fraction of images (H, W, 3) uint8 in which every colour and shape of the caption is
    detected; ``colour_fidelity``: the fraction in which every colour is (shape aside)."""
    exact = [caption_fidelity(image, caption) for image, caption in zip(images, captions)]
    colours = []
    for image, caption in zip(images, captions):
        wanted = {colour for colour, word in _COLOUR_WORDS.items() if word.search(caption)}
        colours.append(wanted <= {found.colour for found in detect_objects(image)})
    return {"caption_fidelity": float(np.mean(exact)), "colour_fidelity": float(np.mean(colours))}


@torch.no_grad()
def generate(pipe: StableDiffusionPipeline, captions: Sequence[str], *, steps: int, guidance_scale: float,
             seed: int, batch_size: int = 32) -> list[np.ndarray]:
    """One (H, W, 3) uint8 image per caption; image ``i`` is seeded by ``seed + i`` whatever the batching."""
    images = []
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start : start + batch_size])
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        output = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                      output_type="np")
        images += [(np.asarray(image) * 255).round().astype(np.uint8) for image in output.images]
    return images


def evaluate_pipeline(pipe: StableDiffusionPipeline, captions: Sequence[str], *, out: Path, step: int,
                      steps: int, guidance_scale: float, seed: int, grid_count: int) -> dict[str, float]:
    """Generate for ``captions``, score caption fidelity, save ``samples/step-<N>.png`` (the first ``grid_count``)
    and append the scores to ``fidelity.jsonl``."""
    images = generate(pipe, captions, steps=steps, guidance_scale=guidance_scale, seed=seed)
    scores = fidelity_scores(images, captions)
    save_grid([Image.fromarray(image) for image in images[:grid_count]], list(captions[:grid_count]),
              out / "samples" / f"step-{step:07d}.png")
    record = {"step": step, "count": len(captions), "steps": steps, "guidance_scale": guidance_scale, **scores}
    with open(out / "fidelity.jsonl", "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
    logger.info("step %d: caption fidelity %.3f, colour fidelity %.3f on %d held-out captions", step,
                scores["caption_fidelity"], scores["colour_fidelity"], len(captions))
    return scores


@torch.no_grad()
def evaluate_reconstructions(vae: AutoencoderKL, images: torch.Tensor, captions: Sequence[str], *,
                             path: Path, grid_count: int) -> dict[str, float]:
    """Encode and decode (posterior mean) ``images`` (B, 3, H, W) uint8; score the reconstructions' caption fidelity
    and mean squared error in [-1, 1] units, and save originals above reconstructions to ``path``."""
    was_training = vae.training
    vae.eval()
    device = next(vae.parameters()).device
    pixels = to_pixels(images).to(device)
    decoded = torch.cat([vae.decode(vae.encode(chunk).latent_dist.mean).sample for chunk in pixels.split(64)])
    vae.train(was_training)
    recon = to_uint8(decoded)
    scores = fidelity_scores(list(recon), captions)
    scores["mse"] = float(torch.mean((decoded.clamp(-1, 1) - pixels) ** 2))
    count = min(grid_count, len(recon))
    originals = [Image.fromarray(image) for image in to_uint8(pixels[:count])]
    save_grid(originals + [Image.fromarray(image) for image in recon[:count]], None, path, cols=count)
    return scores


def save_grid(images: list[Image.Image], labels: list[str] | None, path: Path, *, cols: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, labels=labels, cols=cols).save(path)
