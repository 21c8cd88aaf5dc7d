"""The parts of a small latent diffusion model, built from :mod:`training.base_config`: a word-level CLIP tokenizer,
``AutoencoderKL``, ``CLIPTextModel``, ``UNet2DConditionModel``, the DDPM noise schedule, and the diffusers pipeline
folder they are saved as.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from gligen_ext.shapes_world import COLOURS, SHAPES
from gligen_ext.testing import write_byte_tokenizer

from .base_config import BaseConfig, DiffusionConfig, TextEncoderConfig, UNetConfig, VaeConfig
from .dataclass_io import ConfigError
from .deepen_unet import deepen_unet, deepening_error, per_level

logger = logging.getLogger(__name__)

SHAPES_WORLD_WORDS: tuple[str, ...] = ("a", "and", "person", *COLOURS, *SHAPES)
_SCALED_LINEAR_BETAS = {"beta_start": 0.00085, "beta_end": 0.012}  # Stable Diffusion's


def write_word_tokenizer(folder: str | os.PathLike, words: Iterable[str], *, max_length: int) -> CLIPTokenizer:
    """Write a CLIP tokenizer in which each of ``words`` is one token, and load it.

    It is the byte-level vocabulary of :func:`gligen_ext.testing.write_byte_tokenizer` (any text still tokenises,
    unknown words byte by byte) plus, for each word, a chain of BPE merges that joins its letters left to right.
    The start and end tokens are special, so the end token (where CLIP pools) never occurs inside a caption.
    """
    folder = write_byte_tokenizer(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = []
    # longer words first: their merges rank higher, so a shorter word's merge cannot split a longer word
    for word in sorted(set(words), key=lambda w: (-len(w), w)):
        pieces = [*word[:-1], word[-1] + "</w>"]
        joined = pieces[0]
        for piece in pieces[1:]:
            merges.append(f"{joined} {piece}")
            joined += piece
            vocab.setdefault(joined, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"}))
    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    split = [w for w in words if len(tokenizer(w).input_ids) != 3]
    if split:
        raise ValueError(f"words: {split} do not tokenise to one token each; give words of letters only")
    return tokenizer


def caption_token_ids(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """(N, max_length) token ids, padded as the pipelines pad; a caption longer than ``max_length`` is an error."""
    lengths = [len(ids) for ids in tokenizer(captions).input_ids]
    too_long = [c for c, n in zip(captions, lengths) if n > tokenizer.model_max_length]
    if too_long:
        raise ValueError(f"text_encoder.max_length: {tokenizer.model_max_length} tokens cannot hold "
                         f"{too_long[0]!r} ({max(lengths)} tokens); raise it")
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


def build_vae(config: VaeConfig, *, resolution: int) -> AutoencoderKL:
    """A KL autoencoder ``resolution`` -> ``resolution / 2^(blocks - 1)`` with ``latent_channels`` channels."""
    blocks = len(config.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=resolution,
    )


def build_text_encoder(config: TextEncoderConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A ``CLIPTextModel`` sized for ``tokenizer``; its end-token id is the tokenizer's, where it pools."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        max_position_embeddings=config.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))


def build_unet(config: UNetConfig, *, latent_size: int, latent_channels: int,
               cross_attention_dim: int) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` with cross-attention blocks at every level, on ``latent_size`` latents."""
    levels = len(config.block_out_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block if isinstance(config.layers_per_block, int) else tuple(
            config.layers_per_block),
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=cross_attention_dim,
    )


def noise_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The training noise schedule, predicting ``config.prediction_type``."""
    betas = _SCALED_LINEAR_BETAS if config.beta_schedule == "scaled_linear" else {}
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
                         clip_sample=False, prediction_type=config.prediction_type, **betas)


def inference_scheduler(training: DDPMScheduler) -> DDIMScheduler:
    """DDIM on the training betas; "trailing" spacing starts sampling at the last training step (pure noise)."""
    # steps_offset only shifts "leading" spacing; 1 is what diffusers expects of saved configs
    return DDIMScheduler.from_config(training.config, clip_sample=False, set_alpha_to_one=False,
                                     timestep_spacing="trailing", steps_offset=1)


def assemble_pipeline(*, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                      unet: UNet2DConditionModel, scheduler: DDIMScheduler) -> StableDiffusionPipeline:
    """An ordinary Stable Diffusion pipeline of the parts (no safety checker: nothing here needs one)."""
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latent_size(config: BaseConfig) -> int:
    """Side of the latents: the resolution over the VAE's downsampling."""
    return config.data.resolution // 2 ** (len(config.vae.block_out_channels) - 1)


def tokenizer_folder(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "tokenizer"


def load_init_vae(init_from: str | os.PathLike) -> AutoencoderKL:
    """The VAE of the pipeline folder ``init_from`` in fp32 (a shipped fp16 copy included)."""
    folder = Path(init_from)
    if not (folder / "vae" / "config.json").is_file():
        raise ConfigError(f"diffusion.init_from: '{folder}' is not a pipeline folder with a vae/ (give a train_base "
                          f"output_dir's model/, e.g. runs/shapes_base/model)")
    return AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True).float()


def copy_init_weights(init_from: str | os.PathLike, *, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel,
                      unet: UNet2DConditionModel) -> None:
    """Load the text encoder and UNet weights of the pipeline folder ``init_from`` into the freshly built models;
    a different vocabulary or architecture is a :class:`ConfigError` naming the section to match. A UNet that only
    has more layers per block grows from the saved one, its added layers identities (training/deepen_unet.py)."""
    folder = Path(init_from)
    if CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True).get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"diffusion.init_from: '{folder}' was trained on captions with other words; continue it on "
                          f"its own data.train")
    sources = {"text_encoder": (text_encoder, CLIPTextModel), "unet": (unet, UNet2DConditionModel)}
    for name, (model, loader) in sources.items():
        source = loader.from_pretrained(folder / name, local_files_only=True).float()
        if name == "unet" and per_level(source) != per_level(model):
            if reason := deepening_error(source, model):
                raise ConfigError(f"diffusion.init_from: its unet cannot grow into the config's unet section: "
                                  f"{reason}; change only unet.layers_per_block, to at least the saved depth")
            added = deepen_unet(source, model)
            logger.info("unet grown from %s's layers per block %s to %s: %d layers added as identities", folder,
                        per_level(source), per_level(model), len(added))
            continue
        try:
            model.load_state_dict(source.state_dict())
        except RuntimeError as error:
            raise ConfigError(f"diffusion.init_from: its {name} does not match the config's {name} section; use the "
                              f"section of the run that made '{folder}' ({str(error).splitlines()[0]})") from None
