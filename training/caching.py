"""Encode once, train many epochs: VAE latents and phrase embeddings computed with ``datasets.map`` into a cache
folder, so training reads them instead of running the frozen VAE and text encoder every step.

Latents are taken of the centre crop, so a cached run loses random crops; :class:`training.data.LayoutExamples`
still flips the latents and the layout together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.fingerprint import Hasher
from torch import nn

from .augment import plan_crop_flip, transform_image
from .data import undecoded_images
from .records import BadRow, open_image

logger = logging.getLogger(__name__)
_PHRASE_TABLE_PREFIX = "phrase-embeddings-"


def module_digest(module: nn.Module) -> str:
    """A digest of a module's class, config and weights: a cache made with other weights is never reused."""
    digest = hashlib.sha256(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        digest.update(json.dumps(dict(config) if isinstance(config, dict) else config.to_dict(), sort_keys=True,
                                 default=str).encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _centre_pixels(stored: Any, resolution: int) -> tuple[torch.Tensor, list[int]] | None:
    """The centre crop of a stored image as (3, R, R) in [-1, 1] and its source size (W, H); None if unreadable."""
    try:
        image = open_image(stored, column="image").convert("RGB")
    except BadRow:
        return None
    plan = plan_crop_flip(*image.size, rng=np.random.default_rng(0), random_crop=False, flip_prob=0.0)
    pixels = np.asarray(transform_image(image, plan, resolution=resolution), dtype=np.float32)
    return torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1.0, list(image.size)


@torch.no_grad()
def cache_latents(records: datasets.Dataset, vae: nn.Module, *, resolution: int, batch_size: int,
                  cache_dir: str | os.PathLike) -> datasets.Dataset:
    """``records`` plus ``latents`` (C, R/8, R/8) float32: the VAE latent mean of the centre crop at ``resolution``,
    minus ``vae.config.shift_factor`` (if any), times ``vae.config.scaling_factor``; and ``image_size`` (W, H). Rows
    whose image cannot be read get None (training reports them as ``unreadable_image``). The table is written under
    ``cache_dir`` and reused by a later call with the same records, resolution and VAE weights."""
    parameter = next(vae.parameters())
    # SD's VAE halves the size in all but its last block (8x); tiny test VAEs have fewer blocks
    side = resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    channels = vae.config.latent_channels
    fingerprint = Hasher.hash(("latents", records._fingerprint, resolution, module_digest(vae)))
    cache_file = Path(cache_dir) / f"latents-{fingerprint}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    features = records.features.copy()
    features["latents"] = datasets.Array3D(shape=(channels, side, side), dtype="float32")
    features["image_size"] = datasets.List(datasets.Value("int32"), length=2)

    def encode(images: list[Any]) -> dict[str, list[Any]]:
        decoded = [_centre_pixels(stored, resolution) for stored in images]
        good = [item for item in decoded if item is not None]
        latents = iter([])
        if good:
            pixels = torch.stack([pixels for pixels, _ in good]).to(parameter.device, parameter.dtype)
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            mean = (vae.encode(pixels).latent_dist.mean - shift) * vae.config.scaling_factor
            latents = iter(mean.float().cpu().numpy())
        return {"latents": [None if item is None else next(latents) for item in decoded],
                "image_size": [None if item is None else item[1] for item in decoded]}

    undecoded = undecoded_images(records)
    features["image"] = undecoded.features["image"]
    cached = undecoded.map(encode, batched=True, batch_size=batch_size, input_columns=["image"], features=features,
                           cache_file_name=str(cache_file), new_fingerprint=fingerprint, desc="Encoding latents")
    return cached.cast_column("image", records.features["image"])


class CachedPhraseEncoder:
    """``encoder(list[str]) -> (n, width)`` float32 from a table of precomputed phrase embeddings; a drop-in for
    :class:`gligen_ext.encoders.PhraseEncoder`. A phrase outside the table goes to ``fallback`` if one is given."""

    def __init__(self, table: datasets.Dataset, *, fallback: Callable[[list[str]], torch.Tensor] | None = None):
        self.table = table.with_format("numpy", columns=["embedding"])
        self.rows = {phrase: i for i, phrase in enumerate(table["phrase"])}
        self.fallback = fallback

    @classmethod
    def load(cls, folder: str | os.PathLike, *,
             fallback: Callable[[list[str]], torch.Tensor] | None = None) -> CachedPhraseEncoder:
        """Reopen a table written by :func:`cache_phrase_embeddings`."""
        return cls(datasets.load_from_disk(str(folder)), fallback=fallback)

    @property
    def width(self) -> int:
        return int(self.table.features["embedding"].length)

    def __call__(self, phrases: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(p for p in phrases if p not in self.rows))
        if missing and self.fallback is None:
            raise KeyError(f"phrases: {missing[:3]} are not in the phrase-embedding cache; cache these records with "
                           "cache_phrase_embeddings or give a fallback encoder")
        extra = dict(zip(missing, self.fallback(missing).float().cpu())) if missing else {}
        known = [p for p in phrases if p in self.rows]
        table = torch.from_numpy(self.table[[self.rows[p] for p in known]]["embedding"]) if known else None
        position = {p: i for i, p in enumerate(known)}
        if not phrases:
            return torch.zeros(0, self.width)
        return torch.stack([table[position[p]] if p in position else extra[p] for p in phrases]).float()


def _phrases_of(layouts: list[str]) -> dict[str, list[str]]:
    phrases = []
    for text in layouts:
        try:
            layout = json.loads(text or "{}")
            boxes = (layout.get("boxes") or []) if isinstance(layout, dict) else []
        except ValueError:
            continue  # a bad layout is reported when the row is trained on
        phrases += [b["phrase"].strip() for b in boxes if isinstance(b, dict) and isinstance(b.get("phrase"), str)]
    return {"phrase": [p for p in phrases if p]}


def _encoder_digest(phrase_encoder: Callable[[list[str]], torch.Tensor]) -> str:
    text_encoder, tokenizer = getattr(phrase_encoder, "text_encoder", None), getattr(phrase_encoder, "tokenizer", None)
    if isinstance(text_encoder, nn.Module):
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
        return Hasher.hash((type(phrase_encoder).__name__, module_digest(text_encoder), vocab))
    return Hasher.hash(phrase_encoder)


@torch.no_grad()
def cache_phrase_embeddings(records: datasets.Dataset | Sequence[str],
                            phrase_encoder: Callable[[list[str]], torch.Tensor], *, cache_dir: str | os.PathLike,
                            batch_size: int = 256) -> CachedPhraseEncoder:
    """Encode every unique box phrase of ``records`` (or a list of phrases) once with ``phrase_encoder`` and save the
    table ``phrase -> embedding`` under ``cache_dir``; a later call with the same phrases and encoder weights
    reloads it. Returns the :class:`CachedPhraseEncoder` over the table."""
    if isinstance(records, datasets.Dataset):
        found = records.select_columns(["layout"]).map(_phrases_of, batched=True, input_columns=["layout"],
                                                       remove_columns=["layout"], keep_in_memory=True,
                                                       desc="Collecting phrases")
        phrases = sorted(found.unique("phrase")) if len(found) else []
    else:
        phrases = sorted({p.strip() for p in records if p.strip()})
    folder = Path(cache_dir) / f"{_PHRASE_TABLE_PREFIX}{Hasher.hash((phrases, _encoder_digest(phrase_encoder)))}"
    if folder.is_dir():
        logger.info("Reusing phrase embeddings in %s", folder)
        return CachedPhraseEncoder.load(folder)
    width = getattr(phrase_encoder, "width", None) or int(phrase_encoder(phrases[:1] or ["a"]).shape[-1])
    features = datasets.Features({"phrase": datasets.Value("string"),
                                  "embedding": datasets.List(datasets.Value("float32"), length=width)})
    table = datasets.Dataset.from_dict({"phrase": phrases}, features=datasets.Features({"phrase": features["phrase"]}))
    table = table.map(lambda batch: {"embedding": phrase_encoder(list(batch)).float().cpu().numpy()}, batched=True,
                      batch_size=batch_size, input_columns=["phrase"], features=features, keep_in_memory=True,
                      desc="Encoding phrases")
    table.save_to_disk(str(folder))
    return CachedPhraseEncoder.load(folder)
