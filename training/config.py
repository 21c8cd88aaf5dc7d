"""Training configuration: dataclasses are the schema, YAML files hold the values, dotted CLI flags override them.

``load_config("configs/boxes_sd15.yaml", ["--train.lr", "1e-4", "--data.resolution=256"])`` reads the file, applies
the overrides and checks everything. A key the schema does not know is a :class:`ConfigError` with the closest known
key as a suggestion, whether it comes from the file or the command line; values are converted to the field's type.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import yaml

from .dataclass_io import ConfigError, build_dataclass, dotted_keys, read_config_file, suggest

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class ModelConfig:
    """The frozen Stable Diffusion base: a diffusers folder or hub id with vae/text_encoder/tokenizer/unet/scheduler
    subfolders (SDXL adds text_encoder_2/tokenizer_2; detected from the UNet's ``addition_embed_type``)."""

    pretrained: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    revision: str | None = None
    variant: str | None = None
    # another VAE folder or hub id, e.g. an fp16-safe SDXL VAE (madebyollin/sdxl-vae-fp16-fix)
    vae: str | None = None


@dataclass
class AdapterConfig:
    """The grounding adapter being trained: one or several registered modalities in one adapter."""

    modalities: list[str] = field(default_factory=lambda: ["boxes"])
    name: str = "default"
    # modality -> keyword options of its tokenizer, e.g. {"depth": {"resize_input": 256}}
    tokenizer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # > 0: Fourier features (this many frequencies) of each visual token's grid position in the gated layers, for
    # small UNets whose features do not say where a token is (gligen_ext.GatedSelfAttention); 0 is GLIGEN's layer
    visual_position_freqs: int = 0
    # width of the gated layers' feed-forward over the block's: GLIGEN's 4; 1 makes the adapter about half as large
    ff_mult: int = 4
    # start from the weights of an adapter file (a second stage, a fine-tune) instead of the identity init
    init_from: str | None = None
    # fine-tune init_from's adapter through low-rank deltas (peft LoRA) on its gated layers instead: the run writes a
    # small grounding_lora.safetensors that loads on top of that adapter (gligen_ext.load_adapter_lora) or merges in
    lora_rank: int | None = None
    lora_alpha: float | None = None  # None: alpha = rank (scale 1)


@dataclass
class DataConfig:
    """Where the records are and how examples are made from them (see ``training/data.py``)."""

    train: str = ""
    validation: str | None = None
    split: str = "train"
    resolution: int = 512
    random_crop: bool = True
    flip_prob: float = 0.5
    min_box_area: float = 0.01
    max_boxes: int = 30
    max_persons: int = 8
    num_workers: int = 2
    # read the records lazily (a table larger than the disk): shuffled in a buffer, each process reads its shards
    streaming: bool = False
    shuffle_buffer: int = 1000
    # encode once, train many epochs (training/caching.py): phrase embeddings are cached here when set
    cache_dir: str | None = None
    # also cache VAE latents of the centre crops (faster, but no random crops); needs cache_dir
    cache_latents: bool = False


@dataclass
class TrainConfig:
    """The optimisation recipe; defaults follow GLIGEN (arXiv 2301.07093, reference gligen.md Sec. 5)."""

    output_dir: str = "runs/gligen"
    seed: int = 0
    max_steps: int = 500_000
    batch_size: int = 2  # per process; the global batch is batch_size x processes x gradient_accumulation_steps
    gradient_accumulation_steps: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    lr_scheduler: str = "constant_with_warmup"  # any name diffusers' get_scheduler knows
    warmup_steps: int = 10_000
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    # per-sample condition dropout for classifier-free guidance (gligen.md Sec. 3)
    grounding_drop: float = 0.1
    caption_drop: float = 0.5
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"train.mixed_precision: got {self.mixed_precision!r}; use one of {', '.join(MIXED_PRECISION)}"
            )
        for name in ("grounding_drop", "caption_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train.{name}: a probability in [0, 1], got {getattr(self, name)}")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}: must be at least 1, got {getattr(self, name)}")


@dataclass
class LogConfig:
    """What the run shows while it learns: console/tracker scalars and sample grids."""

    every: int = 50
    report_to: str = "none"  # "none", "all", or an accelerate tracker name such as "tensorboard" or "wandb"
    project: str = "gligen-ext"
    sample_every: int = 5_000  # 0 disables sample grids
    sample_count: int = 4
    sample_steps: int = 25
    guidance_scale: float = 5.0  # GLIGEN's training visualisations use 5
    sample_grounding_beta: float = 1.0  # grounding on for every step, to see what the adapter has learnt


@dataclass
class Config:
    """One training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML file (or start from the defaults when ``path`` is None) and apply dotted CLI overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_config_file(path, sections=[item.name for item in dataclasses.fields(Config)])
    raw = _deep_copy(raw)
    for key, value in parse_overrides(overrides):
        _set_dotted(raw, key, value)
    config = build_dataclass(Config, raw, "")
    check_config(config)
    return config


def parse_overrides(args: Sequence[str], *, known_keys: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``["--train.lr", "1e-4", "--data.resolution=64"]`` -> ``[("train.lr", "1e-4"), ("data.resolution", "64")]``.

    ``known_keys`` (default: this schema's, :func:`all_keys`) feed the suggestion for a flag without a section."""
    known_keys = all_keys() if known_keys is None else list(known_keys)
    pairs, args = [], list(args)
    while args:
        flag = args.pop(0)
        if not flag.startswith("--"):
            raise ConfigError(f"unexpected argument {flag!r}; overrides look like --section.key value")
        key, has_value, value = flag[2:].partition("=")
        if not has_value:
            if not args or args[0].startswith("--"):
                raise ConfigError(f"--{key} needs a value")
            value = args.pop(0)
        if "." not in key:
            same_name = [k for k in known_keys if k.endswith("." + key)]
            close = f" (did you mean '{same_name[0]}'?)" if same_name else suggest(key, known_keys)
            raise ConfigError(f"unknown option --{key}{close}; overrides look like --section.key value")
        pairs.append((key, value))
    return pairs


def all_keys() -> list[str]:
    """Every dotted key of the schema, e.g. ``train.lr``."""
    return dotted_keys(Config)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain data (what is written beside every checkpoint)."""
    return dataclasses.asdict(config)


def flat_config(config: Config) -> dict[str, int | float | str | bool]:
    """``{"train.lr": 5e-05, ...}`` with lists, dicts and None as strings: trackers take flat scalar
    hyper-parameters."""
    flat = {}
    for section, values in config_to_dict(config).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def save_config(config: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML; :func:`load_config` reads it back to the same config."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")


def check_config(config: Config) -> None:
    """Checks across fields: modalities are registered, tokenizer options exist, the data source is given."""
    from gligen_ext.tokenizers import available_modalities, get_tokenizer_class

    modalities = config.adapter.modalities
    if config.adapter.lora_rank is not None and not config.adapter.init_from:
        raise ConfigError("adapter.lora_rank: LoRA fine-tunes an existing adapter; give its file as adapter.init_from")
    if config.adapter.lora_rank is not None and config.adapter.lora_rank < 1:
        raise ConfigError(f"adapter.lora_rank: a positive integer, got {config.adapter.lora_rank}")
    if not modalities or len(set(modalities)) != len(modalities):
        raise ConfigError(f"adapter.modalities: a non-empty list without repeats, got {modalities}")
    if config.adapter.ff_mult < 1:
        raise ConfigError(f"adapter.ff_mult: a positive integer (GLIGEN's is 4), got {config.adapter.ff_mult}")
    for modality in modalities:
        if modality not in available_modalities():
            raise ConfigError(
                f"adapter.modalities: unknown modality {modality!r}{suggest(modality, available_modalities())}; "
                f"known: {', '.join(available_modalities())}"
            )
    from .records import RECORD_MODALITIES, layout_field_modalities

    served = [*RECORD_MODALITIES, *layout_field_modalities()]
    unserved = [m for m in modalities if m not in served]
    if unserved:
        raise ConfigError(f"adapter.modalities: training records carry no {', '.join(unserved)}; "
                          f"train one of {', '.join(served)}")
    for modality, options in config.adapter.tokenizer_options.items():
        if modality not in modalities:
            raise ConfigError(
                f"adapter.tokenizer_options.{modality}: not one of adapter.modalities ({', '.join(modalities)})"
            )
        accepted = [p for p in inspect.signature(get_tokenizer_class(modality).__init__).parameters if p != "self"]
        for option in options:
            if option not in accepted or option == "dims":
                known = [p for p in accepted if p != "dims"]
                raise ConfigError(
                    f"adapter.tokenizer_options.{modality}.{option}: unknown option{suggest(option, known)}; "
                    f"the {modality!r} tokenizer takes {', '.join(known)}"
                )
    from diffusers.optimization import SchedulerType

    schedules = [kind.value for kind in SchedulerType]
    if config.train.lr_scheduler not in schedules:
        raise ConfigError(f"train.lr_scheduler: unknown schedule {config.train.lr_scheduler!r}"
                          f"{suggest(config.train.lr_scheduler, schedules)}; known: {', '.join(schedules)}")
    if config.data.streaming and config.data.cache_dir:
        raise ConfigError("data.cache_dir: caching needs the whole table on disk; turn off data.streaming")
    if config.data.cache_latents and not config.data.cache_dir:
        raise ConfigError("data.cache_latents: needs data.cache_dir, the folder the cache is written to")
    if not config.data.train:
        raise ConfigError("data.train: give the training records (a save_to_disk folder, parquet/jsonl, or a name)")


def _set_dotted(raw: dict[str, Any], key: str, value: str) -> None:
    """Put a CLI value at ``a.b.c``, checking each level against the schema so typos get a suggestion."""
    parts = key.split(".")
    section_names = [f.name for f in dataclasses.fields(Config)]
    if parts[0] not in section_names:
        raise ConfigError(f"unknown option --{key}{suggest(key, all_keys())}")
    cls, node = get_type_hints(Config)[parts[0]], raw.setdefault(parts[0], {})
    for depth, part in enumerate(parts[1:], start=1):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ConfigError(f"unknown option --{key}{suggest(key, all_keys())}")
        hint = get_type_hints(cls)[part]
        last = depth == len(parts) - 1
        if last:
            node[part] = value
        elif get_origin(hint) is dict:  # e.g. --adapter.tokenizer_options.depth.resize_input 256
            rest = ".".join(parts[depth + 1 :])
            node.setdefault(part, {})
            _set_nested(node[part], rest.split("."), yaml.safe_load(value))
            return
        elif dataclasses.is_dataclass(hint):
            cls, node = hint, node.setdefault(part, {})
        else:
            raise ConfigError(f"--{key}: {'.'.join(parts[: depth + 1])} is a value, not a section")


def _set_nested(node: dict[str, Any], parts: list[str], value: Any) -> None:
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, Mapping):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw
