"""A modality added in one file (``gligen_ext/tokenizers/points.py``), used end to end on tiny components: its
layout field, injection, a few training steps with the noise-prediction loss, save, load and generation."""

import logging

import pytest
import torch
import torch.nn.functional as F

from gligen_ext import (
    GroundingDims,
    LayoutError,
    adapter_parameters,
    add_grounding_adapter,
    grounding_adapters,
    parse_layout,
    prepare_grounding,
    save_grounding_adapter,
)
from gligen_ext.pipelines import GroundedStableDiffusionPipeline
from gligen_ext.testing import tiny_sd_components
from gligen_ext.tokenizers import build_tokenizer, get_tokenizer_class
from gligen_ext.tokenizers.points import LabelledPoint
from gligen_ext.viz import draw_layout

LAYOUT = {"points": [{"point": [0.25, 0.3], "phrase": "a cat"}, {"point": [0.7, 0.65], "phrase": "a ball"}]}
POINTS = get_tokenizer_class("points")


def test_points_field_is_parsed_validated_and_reported():
    in_pixels = {"units": "pixels", "points": [{"point": [32, 48], "phrase": " a cat "}]}
    layout = parse_layout(in_pixels, width=64, height=64)
    assert layout.extras["points"] == (LabelledPoint((0.5, 0.75), "a cat"),)
    assert layout.modalities() == {"points"} and not layout.is_empty()
    assert parse_layout({"points": []}).is_empty()
    with pytest.raises(LayoutError, match=r"layout.points\[0\].point: x = 1.5 is outside the image"):
        parse_layout({"points": [{"point": [1.5, 0.2], "phrase": "a cat"}]})
    with pytest.raises(LayoutError, match=r"layout.points\[1\].phrase: expected a non-empty string"):
        parse_layout({"points": [LAYOUT["points"][0], {"point": [0.1, 0.2], "phrase": ""}]})
    with pytest.raises(LayoutError, match=r"layout.points\[0\]: unknown key 'box'"):
        parse_layout({"points": [{"point": [0.1, 0.2], "phrase": "a", "box": [0, 0, 1, 1]}]})
    with pytest.raises(LayoutError, match="did you mean 'points'.*'points'"):
        parse_layout({"point": LAYOUT["points"]})


def test_points_move_with_crop_and_flip():
    moved = POINTS.transform_layout_field(LAYOUT["points"], crop=(0.2, 0.0, 0.6, 1.0), flip=True)
    assert moved == [{"point": [pytest.approx(0.875), 0.3], "phrase": "a cat"}], "the ball falls outside the crop"
    once = POINTS.transform_layout_field(LAYOUT["points"], crop=(0, 0, 1, 1), flip=True)
    twice = POINTS.transform_layout_field(once, crop=(0, 0, 1, 1), flip=True)
    assert [p["point"] for p in twice] == [pytest.approx(p["point"]) for p in LAYOUT["points"]]


def test_points_past_the_limit_keep_the_first_and_warn(encoders, caplog):
    dims = GroundingDims(token_dim=32, positive_len=32, conv_in_channels=32)
    tokenizer = build_tokenizer("points", dims=dims, max_points=2)
    points = [{"point": [0.1 * i, 0.5], "phrase": f"thing {i}"} for i in range(1, 5)]
    with caplog.at_level(logging.WARNING):
        inputs = tokenizer.prepare([parse_layout({"points": points})], encoders)
    assert "Dropped 2 of 4 points" in caplog.text
    assert inputs["points"][0, :, 0].tolist() == pytest.approx([0.1, 0.2])


def test_points_draw_on_previews():
    blank, drawn = draw_layout({}, width=96, height=64), draw_layout(LAYOUT, width=96, height=64)
    assert drawn.size == (96, 64) and blank.tobytes() != drawn.tobytes()


def test_points_adapter_trains_saves_loads_and_generates(tmp_path, encoders):
    components = tiny_sd_components(tmp_path / "tokenizer")
    unet, vae, text_encoder, tokenizer = (components[k] for k in ("unet", "vae", "text_encoder", "tokenizer"))
    base = {name: p.detach().clone() for name, p in unet.named_parameters()}
    add_grounding_adapter(unet, "points")
    params = list(adapter_parameters(unet, "default").values())
    assert {id(p) for p in params} == {id(p) for p in unet.parameters() if p.requires_grad}

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.sample(generator) * vae.config.scaling_factor
        ids = tokenizer(["a cat and a ball"] * 2, padding="max_length", max_length=77, return_tensors="pt").input_ids
        context = text_encoder(ids)[0]
    gligen = prepare_grounding(unet, LAYOUT, encoders, batch_size=2)
    scheduler = components["scheduler"]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    unet.train()
    for _ in range(4):
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (2,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, context, cross_attention_kwargs={"gligen": gligen}).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval()
    assert torch.isfinite(loss)
    gates = [p for key, p in adapter_parameters(unet, "default").items() if key.endswith("alpha_attn")]
    assert gates and all(float(gate.detach()) != 0.0 for gate in gates), "the gates opened"
    assert all(torch.equal(p, base[name]) for name, p in unet.named_parameters() if name in base), "base is frozen"
    path = save_grounding_adapter(unet, tmp_path / "points.safetensors")

    pipe = GroundedStableDiffusionPipeline(**tiny_sd_components(tmp_path / "tokenizer"))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_grounding_adapter(path)
    assert list(grounding_adapters(pipe.unet)["default"].tokenizers) == ["points"]
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    with torch.no_grad():
        trained = unet(sample, timesteps, context, cross_attention_kwargs={"gligen": gligen}).sample
        loaded = pipe.unet(sample, timesteps, context, cross_attention_kwargs={"gligen": gligen}).sample
    assert torch.equal(trained, loaded)

    def generate(**kwargs):
        options = dict(num_inference_steps=2, guidance_scale=6.0, output_type="pil")
        return pipe("a cat and a ball", generator=torch.Generator().manual_seed(0), **(options | kwargs))

    output = generate(layout=LAYOUT, grounding_beta=1.0, return_overlay=True)
    plain = generate()
    assert output.images[0].size == (64, 64)
    assert output.images[0].tobytes() != plain.images[0].tobytes(), "the points ground the generation"
    assert output.overlays[0].tobytes() != output.images[0].tobytes(), "the overlay draws the points"


def test_the_training_script_trains_the_new_modality_from_records(tmp_path):
    """The same script and record format as the built-in modalities: points travel in the layout JSON."""
    import json

    import datasets
    import numpy as np
    from PIL import Image
    from training_fixtures import CONFIGS, reset_accelerate, tiny_overrides, write_tiny_base

    from gligen_ext import read_adapter_config
    from training.data import LayoutExamples
    from training.records import record_features
    from training.train import main

    rng = np.random.default_rng(0)
    rows = [
        {"image": Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)), "caption": f"scene {i}",
         "layout": json.dumps({"units": "normalized", "points": [{"point": [0.2 + 0.1 * i, 0.5], "phrase": "a cat"}]})}
        for i in range(4)
    ]
    records = tmp_path / "records"
    datasets.Dataset.from_list(rows, features=record_features([])).save_to_disk(str(records))
    example = LayoutExamples(datasets.load_from_disk(str(records)), resolution=32, modalities=["points"], seed=0)[0]
    assert example["layout"]["points"]  # decoded and moved with the crop and flip

    base = write_tiny_base(tmp_path / "sd")
    overrides = tiny_overrides(base, records, tmp_path / "run")
    try:
        adapter_file = main(["--config", str(CONFIGS / "points_tiny.yaml"), *overrides])
    finally:
        reset_accelerate()
    assert list(read_adapter_config(adapter_file)["modalities"]) == ["points"]
