"""Checkpoints that lose nothing and are never torn.

A checkpoint is a folder ``checkpoint-<step>`` holding:

* ``grounding_adapter.safetensors`` — the adapter, a normal gligen-ext adapter file (usable for inference as is);
* what ``accelerator.save_state`` writes — optimizer (``optimizer.bin``), registered objects such as the LR schedule
  (``custom_checkpoint_0.pkl``), the grad scaler, and one ``random_states_<process>.pkl`` per process (python, numpy,
  torch RNGs and accelerate's step counter); the frozen base model is *not* written (a save hook removes it);
* ``progress.json`` — step, epoch and the number of batches of that epoch already consumed, and the bad-row counts;
* ``config.yaml`` — the resolved config of the run.

Every process writes into ``.checkpoint-<step>.tmp``; once all are done the main process fsyncs the files and renames
the folder in one step, so a crash at any moment leaves either the whole checkpoint or none (a stale ``.tmp`` folder
is ignored and replaced).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors import safe_open
from torch import nn

from gligen_ext import (
    ADAPTER_WEIGHTS_NAME,
    LORA_WEIGHTS_NAME,
    AdapterMismatchError,
    adapter_lora_parameters,
    adapter_parameters,
    save_adapter_lora,
    save_grounding_adapter,
)
from gligen_ext.lora_files import copy_adapter_lora_weights

from .config import Config, save_config

logger = logging.getLogger(__name__)

PROGRESS_NAME = "progress.json"
CONFIG_NAME = "config.yaml"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# test hook: a process stops dead (SIGKILL, nothing flushed) at the named point, e.g. "after-step-5"
CRASH_ENV = "GLIGEN_EXT_TEST_CRASH_AT"


class CheckpointError(ValueError):
    """``--resume`` names nothing usable."""


@dataclass
class TrainingProgress:
    """Where a run is: ``step`` optimizer steps done; in ``epoch``, ``batches_in_epoch`` batches (per process)
    already consumed."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    bad_rows: dict[str, int] = field(default_factory=dict)


def register_adapter_only_hooks(accelerator: Accelerator) -> None:
    """Keep ``save_state``/``load_state`` from writing or reading the whole UNet: the adapter file carries the only
    weights that change, and it is written and read by :func:`save_checkpoint`/:func:`load_checkpoint`."""

    def drop_model_weights(models: list[nn.Module], weights: list[dict], output_dir: str) -> None:
        weights.clear()

    def skip_model_loading(models: list[nn.Module], input_dir: str) -> None:
        models.clear()

    accelerator.register_save_state_pre_hook(drop_model_weights)
    accelerator.register_load_state_pre_hook(skip_model_loading)


def save_checkpoint(
    accelerator: Accelerator,
    *,
    unet: nn.Module,
    adapter_name: str,
    progress: TrainingProgress,
    config: Config,
) -> Path:
    """Write ``checkpoint-<step>`` atomically into ``config.train.output_dir`` and keep the last K. All processes
    call this; returns the final folder."""
    root = Path(config.train.output_dir)
    final = root / f"checkpoint-{progress.step}"
    staging = root / f".checkpoint-{progress.step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # left by a crash during an earlier attempt
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        save_trained_weights(unet, staging, adapter_name=adapter_name)
        (staging / PROGRESS_NAME).write_text(json.dumps(asdict(progress), indent=1))
        save_config(config, staging / CONFIG_NAME)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        crash_point(f"mid-checkpoint-{progress.step}")
        publish_dir(staging, final)
        prune_checkpoints(root, keep=config.train.keep_checkpoints)
        logger.info("saved %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path, *, unet: nn.Module, adapter_name: str) -> TrainingProgress:
    """Restore adapter (or LoRA) weights, optimizer, LR schedule, RNG states and the data position from ``path``."""
    if adapter_lora_parameters(unet, adapter_name):
        copy_adapter_lora_weights(unet, path / LORA_WEIGHTS_NAME, adapter_name=adapter_name)
    else:
        copy_adapter_weights(unet, path / ADAPTER_WEIGHTS_NAME, adapter_name=adapter_name)
    accelerator.load_state(str(path))
    progress = TrainingProgress(**json.loads((path / PROGRESS_NAME).read_text()))
    logger.info("resumed from %s (step %d, epoch %d)", path, progress.step, progress.epoch)
    return progress


def save_trained_weights(unet: nn.Module, folder: Path, *, adapter_name: str, base_model: str | None = None) -> Path:
    """Write what this run trains into ``folder``: the adapter file, or for a LoRA fine-tune only the LoRA file."""
    if adapter_lora_parameters(unet, adapter_name):
        return save_adapter_lora(unet, folder, adapter_name=adapter_name)
    return save_grounding_adapter(unet, folder, adapter_name=adapter_name, base_model=base_model)


def copy_adapter_weights(unet: nn.Module, path: str | os.PathLike, *, adapter_name: str) -> None:
    """Copy an adapter file's tensors into the adapter already on ``unet`` (same modalities and options)."""
    path = Path(path)
    if path.is_dir():
        path = path / ADAPTER_WEIGHTS_NAME
    params = adapter_parameters(unet, adapter_name)
    with safe_open(str(path), framework="pt") as handle:
        stored = set(handle.keys())
        if stored != set(params):
            missing, unexpected = sorted(set(params) - stored), sorted(stored - set(params))
            raise AdapterMismatchError(
                f"{path}: does not match the configured adapter (missing {missing[:3]}, unexpected {unexpected[:3]});"
                " check adapter.modalities and adapter.tokenizer_options against the file"
            )
        with torch.no_grad():
            for key, param in params.items():
                tensor = handle.get_tensor(key)
                if tensor.shape != param.shape:
                    raise AdapterMismatchError(f"{path}: {key} has shape {tuple(tensor.shape)}, expected "
                                               f"{tuple(param.shape)}; check adapter.tokenizer_options")
                param.copy_(tensor)


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> Path | None:
    """``"latest"`` -> the newest checkpoint in ``output_dir`` (None when there is none yet: a fresh start);
    anything else is a checkpoint folder."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / PROGRESS_NAME).is_file():
        raise CheckpointError(f"--resume {resume}: not a checkpoint folder (no {PROGRESS_NAME}); give a "
                              f"checkpoint-<step> folder or 'latest'")
    return path


def prune_checkpoints(root: Path, *, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old)


def crash_point(name: str) -> None:
    """Kill this process without any clean-up when the test hook names this point (used to test resuming)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def publish_dir(staging: Path, final: Path) -> None:
    """Make the finished folder ``staging`` durable and rename it to ``final`` in one step (replacing an older
    ``final``): readers see the old folder or the new one, never a torn one."""
    _fsync_tree(staging)
    _replace_dir(staging, final)
    _fsync_dir(final.parent)


def _replace_dir(staging: Path, final: Path) -> None:
    # a folder cannot replace a non-empty one; move a same-step leftover (a resumed run re-saving) aside first
    if final.exists():
        aside = final.with_name(f".{final.name}.old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
        os.replace(staging, final)
        shutil.rmtree(aside)
    else:
        os.replace(staging, final)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
