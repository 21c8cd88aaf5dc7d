"""Configuration of a base text-to-image model trained from scratch (``training/train_base.py``).

Dataclasses are the schema, a YAML file (``configs/shapes_base.yaml``) holds the values and dotted flags override
them: ``load_base_config("configs/shapes_base.yaml", ["--diffusion.steps", "100"])``. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import MIXED_PRECISION, parse_overrides
from .dataclass_io import ConfigError, build_dataclass, dotted_keys, read_config_file, set_dotted

BETA_SCHEDULES = ("scaled_linear", "squaredcos_cap_v2", "linear")
PREDICTION_TYPES = ("v_prediction", "epsilon")


@dataclass
class BaseDataConfig:
    """Record tables (``training/records.py``; e.g. from ``training/shapes_world_records.py``)."""

    train: str = "data/shapes_world/train"
    heldout: str | None = "data/shapes_world/heldout"  # captions for samples and caption fidelity; None: none
    resolution: int = 64


@dataclass
class VaeConfig:
    """Stage 1: a small ``AutoencoderKL`` and its recipe (reconstruction MSE + L1, a small KL term)."""

    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64])  # n blocks: 2^(n-1) x smaller
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    lr_scheduler: str = "cosine"  # any name diffusers' get_scheduler knows; cosine ends at 0 with the stage
    warmup_steps: int = 50
    l1_weight: float = 1.0  # on top of MSE: keeps the flat colours' edges sharp
    kl_weight: float = 1e-6  # on the per-image KL sum; small, as in latent diffusion (arXiv 2112.10752)
    scaling_samples: int = 2048  # images whose latents set scaling_factor = 1 / std


@dataclass
class TextEncoderConfig:
    """A small ``CLIPTextModel`` with a word-level tokenizer of the captions' words (``training/base_model.py``)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_length: int = 32  # tokens, start and end included; must hold the longest caption


@dataclass
class UNetConfig:
    """A small ``UNet2DConditionModel`` with cross-attention at every level (so adapters get gated layers there)."""

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128])
    layers_per_block: int | list[int] = 1  # one for every level, or one per level (e.g. [1, 2, 2])
    attention_head_dim: int = 8  # diffusers reads this as the number of heads
    norm_num_groups: int = 32


@dataclass
class DiffusionConfig:
    """Stage 2: the text encoder and UNet learn together to predict the noise (DDPM, arXiv 2006.11239)."""

    steps: int = 6000
    batch_size: int = 32
    lr: float = 3e-4
    lr_scheduler: str = "constant_with_warmup"  # constant, so that a run can be extended by raising steps
    warmup_steps: int = 200
    # > 0: the constant schedule's last decay_steps fall to zero (1 - sqrt), the warmup-stable-decay schedule of
    # Hägele et al. 2024 (arXiv 2405.18392), where a short cooldown matched a cosine run of the same length
    decay_steps: int = 0
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    caption_drop: float = 0.1  # captions replaced by "" so that classifier-free guidance works
    num_train_timesteps: int = 1000
    # cosine suits small latents (improved DDPM, arXiv 2102.09672); scaled_linear is Stable Diffusion's
    beta_schedule: str = "squaredcos_cap_v2"
    # v (arXiv 2202.00512) stays finite where the cosine schedule leaves no signal (alpha_bar(T) ~ 2e-9); epsilon
    # there turns a small error into a huge x0 at the first sampling step
    prediction_type: str = "v_prediction"
    ema_decay: float = 0.999  # 0 turns EMA off; samples and the saved model use the EMA weights
    ema_warmup: bool = True  # diffusers' EMA warm-up: the decay grows with the steps, so early EMA is not stale
    # Min-SNR-gamma loss weighting (arXiv 2303.09556, gamma 5 there): high-SNR steps stop dominating the gradient,
    # which the paper measured as ~3x faster convergence; None keeps the plain MSE of DDPM
    snr_gamma: float | None = None
    # a pipeline folder this recipe made (e.g. runs/shapes_base/model) to continue from: its VAE replaces stage 1 and
    # the text encoder and UNet start from its weights, with a fresh optimizer and schedule; the architecture and
    # the captions' words must be the same
    init_from: str | None = None


@dataclass
class RunConfig:
    """Where outputs go, seeding, checkpoints and precision."""

    output_dir: str = "runs/shapes_base"
    seed: int = 0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    mixed_precision: str = "no"


@dataclass
class BaseLogConfig:
    """What the run shows: loss lines, and sample grids with caption fidelity on held-out captions."""

    every: int = 50
    sample_every: int = 500  # 0 disables samples and fidelity
    sample_count: int = 16  # images in the grid
    eval_count: int = 64  # held-out captions scored for caption fidelity
    inference_steps: int = 25
    guidance_scale: float = 4.0


@dataclass
class BaseConfig:
    """One base-model training run."""

    data: BaseDataConfig = field(default_factory=BaseDataConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    run: RunConfig = field(default_factory=RunConfig)
    log: BaseLogConfig = field(default_factory=BaseLogConfig)

    def __post_init__(self) -> None:
        check_base_config(self)


def check_base_config(config: BaseConfig) -> None:
    """Checks across fields; each error names the key and the fix."""
    positive = {"vae.steps": config.vae.steps, "vae.batch_size": config.vae.batch_size,
                "diffusion.steps": config.diffusion.steps, "diffusion.batch_size": config.diffusion.batch_size,
                "run.checkpoint_every": config.run.checkpoint_every,
                "run.keep_checkpoints": config.run.keep_checkpoints, "log.every": config.log.every}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    if config.run.mixed_precision not in MIXED_PRECISION:
        raise ConfigError(f"run.mixed_precision: got {config.run.mixed_precision!r}; use one of {MIXED_PRECISION}")
    if config.diffusion.beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"diffusion.beta_schedule: got {config.diffusion.beta_schedule!r}; use one of "
                          f"{BETA_SCHEDULES}")
    if config.diffusion.prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"diffusion.prediction_type: got {config.diffusion.prediction_type!r}; use one of "
                          f"{PREDICTION_TYPES}")
    if config.diffusion.prediction_type == "epsilon" and config.diffusion.beta_schedule == "squaredcos_cap_v2":
        raise ConfigError("diffusion.prediction_type: epsilon cannot sample from the cosine schedule's last step "
                          "(no signal left there); use v_prediction, or beta_schedule scaled_linear")
    if not 0.0 <= config.diffusion.caption_drop <= 1.0:
        raise ConfigError(f"diffusion.caption_drop: a probability in [0, 1], got {config.diffusion.caption_drop}")
    if not 0.0 <= config.diffusion.ema_decay < 1.0:
        raise ConfigError(f"diffusion.ema_decay: in [0, 1) (0 turns EMA off), got {config.diffusion.ema_decay}")
    from diffusers.optimization import SchedulerType

    schedules = [kind.value for kind in SchedulerType]
    for section in ("vae", "diffusion"):
        name = getattr(config, section).lr_scheduler
        if name not in schedules:
            raise ConfigError(f"{section}.lr_scheduler: unknown schedule {name!r}; known: {', '.join(schedules)}")
    recipe = config.diffusion
    if recipe.decay_steps and recipe.lr_scheduler != "constant_with_warmup":
        raise ConfigError(f"diffusion.decay_steps: decays a constant_with_warmup schedule, not "
                          f"{recipe.lr_scheduler!r}; set diffusion.decay_steps to 0 or lr_scheduler to "
                          f"constant_with_warmup")
    if recipe.decay_steps < 0 or recipe.decay_steps > max(recipe.steps - recipe.warmup_steps, 0):
        raise ConfigError(f"diffusion.decay_steps: between 0 and steps - warmup_steps "
                          f"({recipe.steps - recipe.warmup_steps}), got {recipe.decay_steps}")
    downsampling = 2 ** (len(config.vae.block_out_channels) - 1) * 2 ** (len(config.unet.block_out_channels) - 1)
    if config.data.resolution % downsampling:
        raise ConfigError(f"data.resolution: {config.data.resolution} must be a multiple of {downsampling}, the "
                          f"VAE's and the UNet's downsampling together")
    for section in ("vae", "unet"):
        channels, groups = getattr(config, section).block_out_channels, getattr(config, section).norm_num_groups
        if any(c % groups for c in channels):
            raise ConfigError(f"{section}.norm_num_groups: {groups} must divide every block_out_channels {channels}")
    levels, depths = len(config.unet.block_out_channels), config.unet.layers_per_block
    per_level = depths if isinstance(depths, list) else [depths] * levels
    if len(per_level) != levels or min(per_level, default=0) < 1:
        raise ConfigError(f"unet.layers_per_block: one number of at least 1, or one per level of block_out_channels "
                          f"{config.unet.block_out_channels}; got {depths}")
    if config.text_encoder.hidden_size % config.text_encoder.num_heads:
        raise ConfigError(f"text_encoder.num_heads: {config.text_encoder.num_heads} must divide hidden_size "
                          f"{config.text_encoder.hidden_size}")


def load_base_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> BaseConfig:
    """Read a YAML file (or start from the defaults when ``path`` is None) and apply dotted CLI overrides."""
    raw = {} if path is None else read_config_file(path, sections=dotted_sections())
    raw = yaml.safe_load(yaml.safe_dump(raw))  # a deep copy: overrides must not edit the caller's data
    for key, value in parse_overrides(overrides, known_keys=dotted_keys(BaseConfig)):
        set_dotted(raw, BaseConfig, key, value)
    return build_dataclass(BaseConfig, raw, "")


def dotted_sections() -> list[str]:
    return [item.name for item in dataclasses.fields(BaseConfig)]


def save_base_config(config: BaseConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML; :func:`load_base_config` reads it back to the same config."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False), encoding="utf-8")
