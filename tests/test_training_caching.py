"""Latent and phrase-embedding caches give what computing directly gives, and are reused from disk."""

import io
import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from gligen_ext.testing import tiny_vae
from training.caching import CachedPhraseEncoder, cache_latents, cache_phrase_embeddings
from training.data import LayoutExamples, StreamingLayoutExamples, collate_examples
from training.records import BadRow, record_features


@pytest.fixture(scope="module")
def records():
    rows = []
    for i, (width, height) in enumerate([(48, 32), (32, 40), (32, 32)]):
        pixels = np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8)
        boxes = [{"box": [0.1, 0.2, 0.3 + 0.1 * i, 0.9], "phrase": p} for p in (["cat", "dog"] if i else ["cat "])]
        rows.append({"image": Image.fromarray(pixels), "caption": f"c{i}",
                     "layout": json.dumps({"boxes": boxes})})
    buffer = io.BytesIO()
    rows[0]["image"].save(buffer, format="PNG")
    rows.append({"image": {"bytes": buffer.getvalue()[:40], "path": None}, "caption": "broken", "layout": "{}"})
    return datasets.Dataset.from_list(rows, features=record_features(maps=()))


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


def test_cached_latents_equal_direct_encoding_and_flip_with_the_layout(records, vae, tmp_path):
    cached = cache_latents(records, vae, resolution=32, batch_size=2, cache_dir=tmp_path)
    assert cached["image_size"][:3] == [[48, 32], [32, 40], [32, 32]] and cached["image_size"][3] is None
    pixel_examples = LayoutExamples(records, resolution=32, modalities=["boxes"], seed=0, random_crop=False,
                                    flip_prob=0.0)
    latent_examples = LayoutExamples(cached, resolution=32, modalities=["boxes"], seed=0, flip_prob=0.0)
    with torch.no_grad():
        for i in range(3):
            direct = vae.encode(pixel_examples[i]["pixel_values"][None]).latent_dist.mean * vae.config.scaling_factor
            example = latent_examples[i]
            assert "pixel_values" not in example and example["latents"].shape == direct.shape[1:]
            torch.testing.assert_close(example["latents"], direct[0], rtol=1e-5, atol=1e-5)
            assert example["layout"] == pixel_examples[i]["layout"]
    assert isinstance(latent_examples[3], BadRow) and latent_examples[3].reason == "unreadable_image"

    flipped = LayoutExamples(cached, resolution=32, modalities=["boxes"], seed=0, flip_prob=1.0)[0]
    assert torch.equal(flipped["latents"], latent_examples[0]["latents"].flip(-1))
    flipped_pixels = LayoutExamples(records, resolution=32, modalities=["boxes"], seed=0, random_crop=False,
                                    flip_prob=1.0)[0]
    assert flipped["layout"] == flipped_pixels["layout"]
    batch = collate_examples([latent_examples[i] for i in range(4)])
    assert batch["latents"].shape == (3, 4, 16, 16) and batch["bad_rows"] == ["unreadable_image"]

    again = cache_latents(records, vae, resolution=32, batch_size=2, cache_dir=tmp_path)
    assert again.cache_files == cached.cache_files  # the same records and weights reuse the file
    other = cache_latents(records, tiny_vae(seed=1), resolution=32, batch_size=2, cache_dir=tmp_path)
    assert other.cache_files != cached.cache_files


def test_streamed_cached_latents(records, vae, tmp_path):
    cached = cache_latents(records, vae, resolution=32, batch_size=4, cache_dir=tmp_path)
    examples = LayoutExamples(cached, resolution=32, modalities=["boxes"], seed=5)
    stream = StreamingLayoutExamples(cached.to_iterable_dataset(), resolution=32, modalities=["boxes"], seed=5,
                                     shuffle_buffer=0)
    for i, example in enumerate(stream):
        if i == 3:
            assert isinstance(example, BadRow)
        else:
            assert torch.equal(example["latents"], examples[i]["latents"]) and example["layout"] == examples[i][
                "layout"]


def test_cached_phrases_equal_direct_encoding_and_reload(records, encoders, tmp_path):
    encode = encoders.encode_phrases
    cached = cache_phrase_embeddings(records, encode, cache_dir=tmp_path)
    assert sorted(cached.rows) == ["cat", "dog"]  # unique, stripped as parse_layout strips them
    phrases = ["dog", "cat", "dog"]
    torch.testing.assert_close(cached(phrases), encode(phrases), rtol=1e-5, atol=1e-6)
    assert cached(phrases).shape == (3, encode.width) and cached.width == encode.width
    folder = next(tmp_path.glob("phrase-embeddings-*"))
    torch.testing.assert_close(CachedPhraseEncoder.load(folder)(phrases), cached(phrases))
    with pytest.raises(KeyError, match="phrase-embedding cache"):
        cached(["a horse"])
    with_fallback = CachedPhraseEncoder.load(folder, fallback=encode)
    torch.testing.assert_close(with_fallback(["a horse", "cat"]), encode(["a horse", "cat"]), rtol=1e-5, atol=1e-6)
    assert cache_phrase_embeddings(records, encode, cache_dir=tmp_path).table.cache_files == cached.table.cache_files
