"""A resumable optimisation stage of a model trained from scratch (``training/train_base.py``).

Every random draw of step ``s`` (which examples, which noise) comes from generators seeded by ``(seed, stage,
s)``, so a resumed run draws what the uninterrupted run would have drawn and no RNG state needs saving. A checkpoint
is a folder ``<stage root>/checkpoint-<step>`` with one ``<name>.safetensors`` per model, ``optimizer.pt``,
``schedule.pt``, ``ema.pt`` (when EMA is on) and ``progress.json``; it is written as ``.checkpoint-<step>.tmp`` and
renamed when complete (:func:`training.checkpoints.publish_dir`), so a crash never leaves a torn one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from safetensors.torch import load_model, save_model
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import PROGRESS_NAME, crash_point, prune_checkpoints, publish_dir, resolve_resume

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    """One optimisation: what learns (``models``, by name), how, for how many steps, and where its checkpoints go."""

    name: str
    root: Path
    models: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    steps: int
    checkpoint_every: int
    keep_checkpoints: int
    max_grad_norm: float | None = None
    ema: EMAModel | None = None

    def parameters(self) -> list[nn.Parameter]:
        return [p for model in self.models.values() for p in model.parameters()]


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, *keys)``, e.g. ``(seed, stage, step)``."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class EpochBatches:
    """``batches(step)`` -> (B,) example indices of 1-based ``step``: epochs walk a fresh permutation each, seeded by
    ``(seed, stream, epoch)``; the last incomplete batch of an epoch is dropped."""

    def __init__(self, count: int, batch_size: int, *, seed: int, stream: int) -> None:
        if batch_size > count:
            raise ValueError(f"batch_size: {batch_size} is larger than the {count} training examples; lower it")
        self.count, self.batch_size, self.seed, self.stream = count, batch_size, seed, stream
        self.per_epoch = count // batch_size
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step - 1, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = torch.randperm(self.count, generator=step_generator(self.seed, self.stream, epoch))
        return self._order[position * self.batch_size : (position + 1) * self.batch_size]


def save_stage(stage: Stage, step: int, *, config_text: str) -> Path:
    """Write ``checkpoint-<step>`` of ``stage`` atomically and keep the newest ``keep_checkpoints``."""
    final, staging = stage.root / f"checkpoint-{step}", stage.root / f".checkpoint-{step}.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # left by a crash during an earlier attempt
    staging.mkdir(parents=True)
    for name, model in stage.models.items():
        save_model(model, str(staging / f"{name}.safetensors"))
    torch.save(stage.optimizer.state_dict(), staging / "optimizer.pt")
    torch.save(stage.schedule.state_dict(), staging / "schedule.pt")
    if stage.ema is not None:
        torch.save(stage.ema.state_dict(), staging / "ema.pt")
    (staging / PROGRESS_NAME).write_text(json.dumps({"stage": stage.name, "step": step}))
    (staging / "config.yaml").write_text(config_text)
    crash_point(f"mid-{stage.name}-checkpoint-{step}")
    publish_dir(staging, final)
    prune_checkpoints(stage.root, keep=stage.keep_checkpoints)
    logger.info("saved %s", final)
    return final


def load_stage(stage: Stage, path: Path) -> int:
    """Restore models, optimizer, schedule and EMA of ``stage`` from a checkpoint; returns its step."""
    for name, model in stage.models.items():
        load_model(model, str(path / f"{name}.safetensors"))
    stage.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    stage.schedule.load_state_dict(torch.load(path / "schedule.pt", weights_only=True))
    if stage.ema is not None:
        stage.ema.load_state_dict(torch.load(path / "ema.pt", weights_only=True))
    step = int(json.loads((path / PROGRESS_NAME).read_text())["step"])
    logger.info("resumed %s from %s (step %d)", stage.name, path, step)
    return step


def run_stage(
    stage: Stage,
    loss_fn: Callable[[int], torch.Tensor],
    *,
    accelerator: Accelerator,
    resume: bool,
    log_every: int,
    config_text: str,
    after_step: Callable[[int], None] | None = None,
) -> None:
    """Optimise ``loss_fn(step)`` (a scalar tensor) from step 1 (or the newest checkpoint with ``resume``) to
    ``stage.steps``, checkpointing every ``checkpoint_every`` steps and at the end; ``after_step(step)`` runs after
    each optimiser step (samples, evaluation)."""
    start = 0
    checkpoint = resolve_resume("latest", stage.root) if resume else None
    if checkpoint is not None:
        start = load_stage(stage, checkpoint)
    if start >= stage.steps:
        logger.info("%s: already done (%d steps)", stage.name, start)
        return
    params = stage.parameters()
    for model in stage.models.values():
        model.train()
    bar = tqdm(total=stage.steps, initial=start, desc=stage.name, unit="step")
    losses, seconds = [], 0.0
    for step in range(start + 1, stage.steps + 1):
        began = time.perf_counter()
        loss = loss_fn(step)
        accelerator.backward(loss)
        if stage.max_grad_norm:
            accelerator.clip_grad_norm_(params, stage.max_grad_norm)
        stage.optimizer.step()
        stage.schedule.step()
        stage.optimizer.zero_grad(set_to_none=True)
        if stage.ema is not None:
            stage.ema.step(params)
        losses.append(loss.item())
        seconds += time.perf_counter() - began
        bar.update(1)
        if step % log_every == 0 or step == stage.steps:
            mean = sum(losses) / len(losses)
            logger.info("%s step %d/%d loss %.4f lr %.2e %.3f s/step", stage.name, step, stage.steps, mean,
                        stage.schedule.get_last_lr()[0], seconds / len(losses))
            bar.set_postfix(loss=f"{mean:.4f}")
            losses, seconds = [], 0.0
        if after_step is not None:
            after_step(step)
        if step % stage.checkpoint_every == 0 or step == stage.steps:
            save_stage(stage, step, config_text=config_text)
        crash_point(f"{stage.name}-after-step-{step}")
    bar.close()


@contextmanager
def ema_weights(stage: Stage) -> Iterator[None]:
    """Inside the block the models hold their EMA weights (nothing changes without EMA); then the trained ones."""
    if stage.ema is None:
        yield
        return
    params = stage.parameters()
    stage.ema.store(params)
    stage.ema.copy_to(params)
    try:
        yield
    finally:
        stage.ema.restore(params)
