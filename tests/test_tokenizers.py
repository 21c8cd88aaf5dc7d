"""One contract, run on every registered grounding tokenizer (a new modality file is picked up automatically)."""

import logging

import pytest
import torch
from conftest import randomize

from gligen_ext import GroundingDims, GroundingEncoders, LayoutError, available_modalities, parse_layout
from gligen_ext.layout import Layout
from gligen_ext.testing import tiny_reference_image_encoder
from gligen_ext.tokenizers import build_tokenizer, get_tokenizer_class

DIMS = GroundingDims(token_dim=48, positive_len=32, conv_in_channels=32)
GLIGEN_MODALITIES = {"boxes", "image_boxes", "keypoints", "depth", "hed", "canny", "normal", "semantic"}


@pytest.fixture(scope="module")
def all_encoders(encoders):
    return GroundingEncoders(encode_phrases=encoders.encode_phrases, encode_images=tiny_reference_image_encoder())


def test_registry_holds_every_gligen_modality():
    assert GLIGEN_MODALITIES <= set(available_modalities())


@pytest.mark.parametrize("modality", available_modalities())
def test_tokenizer_contract(modality, all_encoders):
    torch.manual_seed(0)
    tokenizer = build_tokenizer(modality, dims=DIMS)
    assert 0.0 <= tokenizer.default_beta <= 1.0
    layout = parse_layout(get_tokenizer_class(modality).example_layout())
    assert tokenizer.handles(layout) and not tokenizer.handles(Layout())

    inputs = tokenizer.prepare([layout, Layout()], all_encoders)
    nulls = tokenizer.null_inputs(2)
    assert inputs.keys() == nulls.keys()
    for key in inputs:
        assert inputs[key].shape == nulls[key].shape and inputs[key].dtype == torch.float32, key
    assert torch.equal(tokenizer.prepare([Layout()], all_encoders)[next(iter(nulls))], nulls[next(iter(nulls))][:1])

    randomize(tokenizer)
    with torch.no_grad():
        tokens = tokenizer(**inputs)
        null_tokens = tokenizer(**nulls)
    assert tokens.shape == (2, tokenizer.num_tokens, DIMS.token_dim)
    assert torch.isfinite(tokens).all()
    # an empty layout gives exactly the null tokens; a real one does not
    assert torch.allclose(tokens[1], null_tokens[1], atol=1e-6)
    assert not torch.allclose(tokens[0], null_tokens[0], atol=1e-4)

    latents, conv_in = torch.randn(2, 4, 12, 10), torch.nn.Conv2d(4, DIMS.conv_in_channels, 3, padding=1)
    residual = tokenizer.conv_in_residual(inputs, latents=latents, conv_in=conv_in)
    if residual is not None:
        assert residual.shape == (2, DIMS.conv_in_channels, 12, 10)
        assert torch.equal(residual[1], torch.zeros_like(residual[1]))
        fresh = build_tokenizer(modality, dims=DIMS)
        fresh.init_from_base(conv_in)
        fresh_residual = fresh.conv_in_residual(inputs, latents=latents, conv_in=conv_in)
        assert torch.equal(fresh_residual, torch.zeros_like(residual))

    rebuilt = build_tokenizer(modality, dims=DIMS, **tokenizer.options)
    assert rebuilt.state_dict().keys() == tokenizer.state_dict().keys()


@pytest.mark.parametrize("modality", [m for m in available_modalities() if get_tokenizer_class(m).layout_key])
def test_layout_field_contract(modality):
    """A modality with its own layout key: parsed into ``Layout.extras``, re-parseable, suggested, movable, drawn."""
    from gligen_ext.viz import draw_layout

    tokenizer_class = get_tokenizer_class(modality)
    key, example = tokenizer_class.layout_key, tokenizer_class.example_layout()
    parsed = parse_layout(example).extras[key]
    assert modality in parse_layout(example).modalities() and not parse_layout({key: []}).modalities()

    def same(a, b):
        equal = a == b
        return bool(equal.all()) if hasattr(equal, "all") else bool(equal)

    assert same(parse_layout({key: parsed}).extras[key], parsed), "a parsed field parses to itself"
    with pytest.raises(LayoutError, match=f"did you mean {key!r}"):
        parse_layout({f"{key}x": example[key]})
    try:
        unmoved = tokenizer_class.transform_layout_field(example[key], crop=(0.0, 0.0, 1.0, 1.0), flip=False)
    except NotImplementedError:  # a modality may opt out of crop and flip
        unmoved = example[key]
    assert same(parse_layout({key: unmoved}).extras[key], parsed)
    assert draw_layout(example, width=64, height=48).size == (64, 48)


def test_box_tokenizer_keeps_largest_boxes_and_warns(encoders, caplog):
    tokenizer = build_tokenizer("boxes", dims=DIMS, max_objs=2)
    boxes = [{"phrase": f"thing {i}", "box": [0.0, 0.0, 0.1 * (i + 1), 0.1 * (i + 1)]} for i in range(4)]
    with caplog.at_level(logging.WARNING):
        inputs = tokenizer.prepare([parse_layout({"boxes": boxes})], encoders)
    assert "2" in caplog.text
    kept = {round(float(b[2]), 3) for b in inputs["boxes"][0]}
    assert kept == {0.3, 0.4}


def test_keypoints_use_visible_joints_only():
    tokenizer = build_tokenizer("keypoints", dims=DIMS)
    points = [[0.5, 0.5, v] for v in [2] * 10 + [1] * 4 + [0] * 3]
    inputs = tokenizer.prepare([parse_layout({"keypoints": [{"points": points}]})], GroundingEncoders())
    assert inputs["masks"][0, :17].tolist() == [1.0] * 10 + [0.0] * 7
    occluded = build_tokenizer("keypoints", dims=DIMS, use_occluded=True)
    inputs = occluded.prepare([parse_layout({"keypoints": [{"points": points}]})], GroundingEncoders())
    assert inputs["masks"][0, :17].sum() == 14


def test_phrase_encoder_pools_each_phrase_alone(encoders, clip_tokenizer, text_encoder):
    embeddings = encoders.encode_phrases(["a cat", "a dog", "a cat"])
    assert embeddings.shape == (3, 32) and torch.equal(embeddings[0], embeddings[2])
    ids = clip_tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(embeddings[0], text_encoder(ids).pooler_output[0])


def test_missing_encoder_is_a_clear_error():
    tokenizer = build_tokenizer("boxes", dims=DIMS)
    layout = parse_layout({"boxes": [{"phrase": "a cat", "box": [0, 0, 1, 1]}]})
    with pytest.raises(ValueError, match="needs a phrase encoder"):
        tokenizer.prepare([layout], GroundingEncoders())
