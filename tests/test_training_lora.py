"""``--lora-rank``: the training script fine-tunes an existing adapter through LoRA and writes only the LoRA file,
which loads on top of its parent and merges into it."""

import pytest
import torch
from conftest import randomize
from training_fixtures import CONFIGS, reset_accelerate, tiny_overrides, write_tiny_base, write_tiny_records

from gligen_ext import (
    GroundingEncoders,
    load_adapter_lora,
    load_grounding_adapter,
    merge_adapter_lora,
    prepare_grounding,
    read_lora_config,
    save_grounding_adapter,
)
from gligen_ext.testing import tiny_unet
from training.config import ConfigError, load_config
from training.train import main


@pytest.fixture(autouse=True)
def fresh_accelerate():
    yield
    reset_accelerate()


def test_lora_fine_tune_writes_a_small_file_that_loads_on_its_parent_and_merges(tmp_path, unet_inputs):
    base, records = write_tiny_base(tmp_path / "sd"), write_tiny_records(tmp_path / "records", count=4)
    # a parent adapter with open gates, as a trained one would have
    parent_run = tmp_path / "parent"
    parent = main(["--config", str(CONFIGS / "tiny.yaml"), *tiny_overrides(base, records, parent_run)])
    unet = tiny_unet()
    load_grounding_adapter(unet, parent)
    randomize(unet.position_net)
    for name, param in unet.named_parameters():
        if name.endswith(("alpha_attn", "alpha_dense")):
            param.data.fill_(1.0)
    parent = save_grounding_adapter(unet, tmp_path / "parent.safetensors")
    reset_accelerate()

    overrides = tiny_overrides(base, records, tmp_path / "lora", adapter__init_from=parent, train__lr=1e-2)
    lora_file = main(["--config", str(CONFIGS / "tiny.yaml"), "--lora-rank", "2", *overrides])
    assert lora_file.name == "grounding_lora.safetensors" and read_lora_config(lora_file)["rank"] == 2
    assert lora_file.stat().st_size < parent.stat().st_size / 20
    assert (tmp_path / "lora" / "checkpoint-2" / "grounding_lora.safetensors").is_file()

    sample, timestep, context = unet_inputs

    outputs = []
    for merge in (False, True):
        fresh = tiny_unet()
        load_grounding_adapter(fresh, parent)
        load_adapter_lora(fresh, lora_file)
        if merge:
            merge_adapter_lora(fresh)
        layout = {"boxes": [{"box": [0.1, 0.1, 0.6, 0.7], "phrase": "x"}]}
        encoders = GroundingEncoders(encode_phrases=lambda phrases: torch.ones(len(phrases), 32))
        grounding = prepare_grounding(fresh, layout, encoders, batch_size=2)
        with torch.no_grad():
            outputs.append(fresh(sample, timestep, context, cross_attention_kwargs={"gligen": grounding}).sample)
        plain = tiny_unet()
        load_grounding_adapter(plain, parent)
        with torch.no_grad():
            parent_out = plain(sample, timestep, context, cross_attention_kwargs={"gligen": grounding}).sample
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert not torch.allclose(outputs[0], parent_out, atol=1e-6)  # the LoRA learnt something


def test_lora_rank_needs_a_parent_adapter(tmp_path):
    overrides = ["--adapter.lora_rank", "4", "--model.pretrained", "x", "--data.train", "y"]
    with pytest.raises(ConfigError, match="adapter.init_from"):
        load_config(CONFIGS / "tiny.yaml", overrides)
