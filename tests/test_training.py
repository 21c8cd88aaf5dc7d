"""The training script on tiny offline components: every shipped config trains, only the adapter learns,
gradient checkpointing keeps the gated layers' gradients, bad rows are skipped and counted."""

import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from training_fixtures import (
    CONFIGS,
    logged_losses,
    reset_accelerate,
    tiny_overrides,
    write_tiny_base,
    write_tiny_records,
)

from gligen_ext import adapter_parameters, load_grounding_adapter, read_adapter_config
from training.config import load_config
from training.data import LayoutExamples, collate_examples, load_records
from training.model import inject_adapter, load_frozen_parts, trainable_parameters
from training.step import denoising_loss, example_generators
from training.train import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    return SimpleNamespace(
        sd=write_tiny_base(root / "sd"),
        sdxl=write_tiny_base(root / "sdxl", sdxl=True),
        records=write_tiny_records(root / "records", count=8),
    )


@pytest.fixture(autouse=True)
def fresh_accelerate():
    yield
    reset_accelerate()


@pytest.mark.parametrize("name", ["boxes_sd15", "keypoints_sd15", "depth_sd15", "multi_sd15", "boxes_sdxl"])
def test_each_shipped_config_trains_on_tiny_components(name, tiny, tmp_path, caplog):
    base = tiny.sdxl if name.endswith("sdxl") else tiny.sd
    overrides = tiny_overrides(base, tiny.records, tmp_path, log__sample_every=2, log__sample_count=2,
                               log__sample_steps=2)
    config = load_config(CONFIGS / f"{name}.yaml", overrides)
    with caplog.at_level(logging.INFO):
        adapter_file = main(["--config", str(CONFIGS / f"{name}.yaml"), *overrides])

    losses = logged_losses(caplog.records)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert list(read_adapter_config(adapter_file)["modalities"]) == config.adapter.modalities
    assert (tmp_path / "samples" / "step-0000002.png").is_file()
    assert {"config.yaml", "progress.json", "optimizer.bin", "grounding_adapter.safetensors"} <= {
        p.name for p in (tmp_path / "checkpoint-2").iterdir()
    }
    assert load_config(tmp_path / "checkpoint-2" / "config.yaml").adapter.modalities == config.adapter.modalities
    # the result is a plain adapter file: it loads onto the base UNet for inference
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    load_grounding_adapter(unet, adapter_file)


def tiny_step_setup(tiny, *overrides):
    config = load_config(CONFIGS / "tiny.yaml", tiny_overrides(
        tiny.sd, tiny.records, "unused", adapter__modalities="boxes,keypoints,depth") + list(overrides))
    parts = load_frozen_parts(config.model)
    inject_adapter(parts, config.adapter)
    examples = LayoutExamples(load_records(config.data.train), resolution=config.data.resolution,
                              modalities=config.adapter.modalities, seed=0)
    batch = collate_examples([examples[i] for i in range(3)])
    return config, parts, batch


def loss_for(config, parts, batch):
    return denoising_loss(parts, parts.unet, batch, adapter_name="default",
                          encoders=SimpleNamespace(encode_phrases=parts.phrase_encoder(), encode_images=None),
                          generators=example_generators(0, 1, batch["indices"].tolist()), caption_drop=0.5,
                          grounding_drop=0.3, resolution=config.data.resolution, device=torch.device("cpu"))


def test_only_adapter_parameters_get_gradients_and_optimizer_state(tiny):
    config, parts, batch = tiny_step_setup(tiny)
    params = trainable_parameters(parts.unet, "default")
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3)
    loss_for(config, parts, batch).backward()
    optimizer.step()

    adapter = adapter_parameters(parts.unet, "default")
    in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(in_optimizer) == len(adapter) and {id(p) for p in in_optimizer} == {id(p) for p in adapter.values()}
    assert sum(p.numel() for p in in_optimizer) == sum(p.numel() for p in adapter.values())
    assert len(optimizer.state) == len(adapter)
    adapter_ids = {id(p) for p in adapter.values()}
    base = [p for p in parts.unet.parameters() if id(p) not in adapter_ids]
    frozen = [*base, *parts.vae.parameters(), *parts.text_encoder.parameters()]
    assert frozen and all(p.grad is None for p in frozen)
    # every adapter parameter takes part in the step (data parallel needs it); at init only the gates move
    assert all(p.grad is not None for p in adapter.values())
    assert any(name.endswith("alpha_attn") and p.grad.abs().sum() > 0 for name, p in adapter.items())


def test_base_parameter_left_trainable_is_an_error(tiny):
    config, parts, _ = tiny_step_setup(tiny)
    parts.unet.conv_in.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="conv_in.weight"):
        trainable_parameters(parts.unet, "default")


def test_gradient_checkpointing_keeps_the_gated_layers_gradients(tiny):
    config, parts, batch = tiny_step_setup(tiny)
    params = trainable_parameters(parts.unet, "default")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # open the gates and move the zero-initialised weights, so every weight has a gradient
        for param in params.values():
            param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    parts.unet.train()

    def gradients():
        parts.unet.zero_grad(set_to_none=True)
        loss_for(config, parts, batch).backward()
        return {name: p.grad.clone() for name, p in params.items()}

    plain = gradients()
    parts.unet.enable_gradient_checkpointing()
    checkpointed = gradients()
    # tokens are made outside the checkpointed blocks and reach them through cross_attention_kwargs
    assert all(plain[name].abs().sum() > 0 for name in plain if ".fuser." in name or ".linears." in name)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-7, msg=name)


def test_bad_rows_are_skipped_counted_and_training_goes_on(tiny, tmp_path, caplog):
    # 3 good rows and one of each kind of bad row; batches of 3 over 2 steps read every row exactly once
    records = write_tiny_records(tmp_path / "data", count=3, bad=3)
    overrides = tiny_overrides(tiny.sd, records, tmp_path / "run", train__batch_size=3, adapter__modalities="boxes")
    with caplog.at_level(logging.INFO):
        main(["--config", str(CONFIGS / "tiny.yaml"), *overrides])
    progress = json.loads((tmp_path / "run" / "checkpoint-2" / "progress.json").read_text())
    assert progress["step"] == 2
    assert progress["bad_rows"] == {"unreadable_image": 1, "layout_outside_image": 1, "empty_layout": 1}
    assert all(math.isfinite(loss) for loss in logged_losses(caplog.records))
    assert any("bad rows skipped so far" in r.getMessage() for r in caplog.records)


def test_a_batch_of_only_bad_rows_steps_at_weight_zero(tiny, tmp_path):
    records = write_tiny_records(tmp_path / "data", count=0, bad=3)
    overrides = tiny_overrides(tiny.sd, records, tmp_path / "run", train__batch_size=3, train__max_steps=1,
                               train__checkpoint_every=1, adapter__modalities="boxes")
    adapter_file = main(["--config", str(CONFIGS / "tiny.yaml"), *overrides])
    progress = json.loads((tmp_path / "run" / "checkpoint-1" / "progress.json").read_text())
    assert progress["step"] == 1 and sum(progress["bad_rows"].values()) == 3
    gates = {k: v for k, v in load_file(adapter_file).items() if k.endswith(("alpha_attn", "alpha_dense"))}
    assert gates and all(float(v) == 0.0 for v in gates.values())


def test_bf16_mixed_precision_keeps_adapter_and_optimizer_state_in_fp32(tiny, tmp_path, caplog):
    overrides = tiny_overrides(tiny.sd, tiny.records, tmp_path, train__mixed_precision="bf16",
                               train__gradient_checkpointing="true", adapter__modalities="boxes,depth",
                               log__sample_every=2, log__sample_count=1, log__sample_steps=1)
    with caplog.at_level(logging.INFO):
        adapter_file = main(["--config", str(CONFIGS / "tiny.yaml"), *overrides])
    assert all(math.isfinite(loss) for loss in logged_losses(caplog.records))
    assert {t.dtype for t in load_file(adapter_file).values()} == {torch.float32}
    optimizer_state = torch.load(tmp_path / "checkpoint-2" / "optimizer.bin", weights_only=True)["state"]
    assert {t.dtype for s in optimizer_state.values() for k, t in s.items() if k != "step"} == {torch.float32}
    assert (tmp_path / "samples" / "step-0000002.png").is_file()


def test_gradient_accumulation_equals_the_same_global_batch_in_one_step(tiny, tmp_path):
    def run(name, batch_size, accumulation):
        overrides = tiny_overrides(tiny.sd, tiny.records, tmp_path / name, train__max_steps=3,
                                   train__batch_size=batch_size, train__gradient_accumulation_steps=accumulation,
                                   train__checkpoint_every=100, adapter__modalities="boxes,keypoints")
        try:
            return load_file(main(["--config", str(CONFIGS / "tiny.yaml"), *overrides]))
        finally:
            reset_accelerate()

    whole, accumulated = run("whole", 4, 1), run("accumulated", 2, 2)
    torch.testing.assert_close(accumulated, whole, rtol=1e-5, atol=1e-6)
    assert any(float(v) != 0.0 for k, v in whole.items() if k.endswith("alpha_attn"))


def test_cached_latents_and_phrase_embeddings_train_and_are_reused(tmp_path, tiny, caplog):
    base = write_tiny_base(tmp_path / "sd8", vae_scale_8=True)
    cache = tmp_path / "cache"

    def run(name):
        overrides = tiny_overrides(base, tiny.records, tmp_path / name, data__cache_dir=cache,
                                   data__cache_latents="true", adapter__modalities="boxes,keypoints")
        try:
            return load_file(main(["--config", str(CONFIGS / "tiny.yaml"), *overrides]))
        finally:
            reset_accelerate()

    with caplog.at_level(logging.INFO):
        first = run("first")
    assert all(math.isfinite(loss) for loss in logged_losses(caplog.records))
    made = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("latents-") for name in made) and any(name.startswith("phrase-") for name in made)
    second = run("second")  # reads the same caches back
    assert sorted(p.name for p in cache.iterdir()) == made
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_streamed_records_train(tiny, tmp_path, caplog):
    """data.streaming reads the table lazily (for tables larger than the disk) and still trains."""
    overrides = tiny_overrides(tiny.sd, tiny.records, tmp_path, data__streaming="true", data__shuffle_buffer=4,
                               train__max_steps=6)  # 4 batches per epoch: crosses into the next
    with caplog.at_level(logging.INFO):
        adapter_file = main(["--config", str(CONFIGS / "tiny.yaml"), *overrides])
    losses = logged_losses(caplog.records)
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert adapter_file.is_file()
