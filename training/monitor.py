"""Seeing that it learns: gate openings, scalars for the console and trackers, and sample grids with layouts drawn.

GLIGEN's gates ``tanh(alpha)`` start at 0 and the adapter has no effect until they open; the loss barely moves while
grounding is learnt (gligen.md Sec. 8.1), so the gates and the sample grids are the signals to watch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from PIL import Image
from torch import nn

from gligen_ext import GatedSelfAttention
from gligen_ext.inject import adapter_parts
from gligen_ext.viz import image_grid

from .model import sampling_pipeline

logger = get_logger(__name__, log_level="INFO")  # logs on the main process only


@torch.no_grad()
def gate_openings(unet: nn.Module, adapter_name: str) -> dict[str, tuple[float, float]]:
    """Block path -> (tanh(alpha_attn), tanh(alpha_dense)) for every gated layer of the adapter."""
    return {
        path.removesuffix(".fuser"): (float(module.alpha_attn.tanh()), float(module.alpha_dense.tanh()))
        for path, module in adapter_parts(unet, adapter_name)
        if isinstance(module, GatedSelfAttention)
    }


def gate_summary(gates: dict[str, tuple[float, float]]) -> str:
    """``attn mean/min/max | dense mean/min/max`` over all layers, for the console."""
    attn = torch.tensor([a for a, _ in gates.values()])
    dense = torch.tensor([d for _, d in gates.values()])
    return (
        f"gates attn {attn.mean():.2e} [{attn.min():.2e}, {attn.max():.2e}] "
        f"dense {dense.mean():.2e} [{dense.min():.2e}, {dense.max():.2e}]"
    )


def tracker_scalars(
    *, loss: float, lr: float, gates: dict[str, tuple[float, float]], bad_rows: dict[str, int]
) -> dict[str, float]:
    """Everything logged to trackers at one step: loss, lr, every layer's gates, bad-row counts by reason."""
    scalars = {"train/loss": loss, "train/lr": lr}
    for path, (attn, dense) in gates.items():
        scalars[f"gates/attn/{path}"] = attn
        scalars[f"gates/dense/{path}"] = dense
    scalars |= {f"data/bad_rows/{reason}": float(count) for reason, count in bad_rows.items()}
    return scalars


def sample_examples(source: str | None, *, config: Any, count: int) -> list[tuple[str, dict]]:
    """The first ``count`` good (caption, layout) pairs of the validation records, centre-cropped, unflipped."""
    if not source or count <= 0:
        return []
    from .data import LayoutExamples, load_records
    from .records import BadRow

    records = load_records(source, split=config.data.split)
    examples = LayoutExamples(
        records,
        resolution=config.data.resolution,
        modalities=config.adapter.modalities,
        seed=config.train.seed,
        random_crop=False,
        flip_prob=0.0,
        max_boxes=config.data.max_boxes,
        max_persons=config.data.max_persons,
        min_box_area=config.data.min_box_area,
    )
    chosen = []
    for i in range(len(examples)):
        example = examples[i]
        if not isinstance(example, BadRow):
            chosen.append((example["caption"], example["layout"]))
        if len(chosen) == count:
            break
    return chosen


def save_sample_grid(
    pipe: Any,
    examples: Sequence[tuple[str, dict]],
    *,
    path: Path,
    resolution: int,
    steps: int,
    guidance_scale: float,
    grounding_beta: float,
    seed: int,
) -> Image.Image:
    """Generate one image per example with a fixed seed (comparable across steps), draw its layout over it, and
    save the grid to ``path``."""
    captions = [caption for caption, _ in examples]
    output = pipe(
        captions,
        layout=[layout for _, layout in examples],
        grounding_beta=grounding_beta,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=resolution,
        width=resolution,
        generator=torch.Generator().manual_seed(seed),
        return_overlay=True,
    )
    grid = image_grid(output.overlays, labels=captions)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid


def log_step(accelerator: Any, unet: nn.Module, config: Any, progress: Any, loss: float, lr: float, bar: Any) -> None:
    """Console line (gate mean/min/max), progress-bar postfix and tracker scalars (every layer's gates)."""
    gates = gate_openings(unet, config.adapter.name)
    bad = sum(progress.bad_rows.values())
    logger.info("step %d epoch %d loss %.4f lr %.2e %s bad rows %d", progress.step, progress.epoch, loss, lr,
                gate_summary(gates), bad)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.1e}")
    if bad:
        logger.info("bad rows skipped so far: %s", ", ".join(f"{k} {v}" for k, v in sorted(progress.bad_rows.items())))
    accelerator.log(tracker_scalars(loss=loss, lr=lr, gates=gates, bad_rows=progress.bad_rows), step=progress.step)


def save_samples(accelerator: Any, parts: Any, config: Any, previews: Sequence[tuple[str, dict]], step: int) -> None:
    """Main process: write ``samples/step-<N>.png`` (and to TensorBoard); the others wait."""
    if accelerator.is_main_process:
        path = Path(config.train.output_dir) / "samples" / f"step-{step:07d}.png"
        parts.unet.eval()
        # frozen weights may be half precision while the adapter is fp32: autocast reconciles them, as in training
        try:
            with accelerator.autocast():
                grid = save_sample_grid(
                    sampling_pipeline(parts, parts.unet),
                    previews,
                    path=path,
                    resolution=config.data.resolution,
                    steps=config.log.sample_steps,
                    guidance_scale=config.log.guidance_scale,
                    grounding_beta=config.log.sample_grounding_beta,
                    seed=config.train.seed,
                )
        finally:
            parts.unet.train()
        logger.info("samples saved to %s", path)
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
    accelerator.wait_for_everyone()


def mean_over_processes(accelerator: Any, value: torch.Tensor) -> float:
    """The mean of a per-process scalar tensor across processes."""
    return accelerator.reduce(value.detach().float(), reduction="mean").item()


def bad_row_totals(accelerator: Any, counter: Any, resumed: dict[str, int]) -> dict[str, int]:
    """Bad rows by reason over all processes, plus those counted before the run resumed (all processes call this)."""
    totals = dict(resumed)
    for counts in gather_object([dict(counter.counts)]):
        for reason, n in counts.items():
            totals[reason] = totals.get(reason, 0) + n
    return totals
