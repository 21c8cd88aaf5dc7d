"""Shipping trained runs into the package: fp16 copies that load, digests in the manifest, the size limit."""

import dataclasses
import hashlib
import json
import shutil

import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from training_fixtures import CONFIGS

from gligen_ext import add_grounding_adapter, save_grounding_adapter
from gligen_ext.pipelines import GroundedStableDiffusionPipeline
from gligen_ext.shapes_world.shipped import read_manifest
from gligen_ext.testing import tiny_sd_components
from training.base_config import load_base_config
from training.config import config_to_dict, load_config
from training.ship_shapes_world import main


@pytest.fixture
def runs(tmp_path):
    """A finished base run and a finished boxes-adapter run, made of tiny components."""
    pipe = StableDiffusionPipeline(**tiny_sd_components(tmp_path / "tokenizer"))
    pipe.save_pretrained(tmp_path / "base" / "model")
    (tmp_path / "base" / "model" / "train_base_config.yaml").write_text(
        (CONFIGS / "shapes_base.yaml").read_text())
    (tmp_path / "base" / "fidelity.jsonl").write_text(json.dumps({"step": 4, "caption_fidelity": 0.5}) + "\n")
    add_grounding_adapter(pipe.unet, "boxes")
    save_grounding_adapter(pipe.unet, tmp_path / "boxes" / "grounding_adapter.safetensors")
    config = config_to_dict(load_config(CONFIGS / "shapes_boxes.yaml"))
    (tmp_path / "boxes" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_base_then_adapter_ship_as_fp16_files_the_manifest_vouches_for(runs, capsys):
    out = runs / "weights"
    main(["--base", str(runs / "base"), "--out", str(out)])
    main(["--adapter", f"boxes={runs / 'boxes'}", "--out", str(out)])  # the base stays
    manifest = read_manifest(out)
    assert manifest["base"]["fidelity"]["caption_fidelity"] == 0.5 and manifest["base"]["seed"] == 0
    assert manifest["adapters"]["boxes"]["modalities"] == ["boxes"]
    boxes = manifest["adapters"]["boxes"]
    files = {**manifest["base"]["files"], boxes["file"]: boxes["sha256"]}
    for relative, digest in files.items():
        assert hashlib.sha256((out / relative).read_bytes()).hexdigest() == digest
    with safe_open(str(out / "adapters" / "boxes.safetensors"), framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}

    pipe = GroundedStableDiffusionPipeline.from_pretrained(out / "base", torch_dtype=torch.float32)
    pipe.load_grounding_adapter(out / "adapters" / "boxes.safetensors")
    assert pipe.unet.dtype == torch.float32


def test_a_new_base_removes_the_adapters_trained_on_the_old_one(runs, capsys):
    out = runs / "weights"
    main(["--base", str(runs / "base"), "--adapter", f"boxes={runs / 'boxes'}", "--out", str(out)])
    assert (out / "adapters" / "boxes.safetensors").is_file()
    main(["--base", str(runs / "base"), "--out", str(out)])
    assert read_manifest(out)["adapters"] == {} and not (out / "adapters" / "boxes.safetensors").exists()
    assert "removed the boxes adapter" in capsys.readouterr().out


def test_over_the_size_limit_is_refused(runs):
    with pytest.raises(SystemExit, match="over --max-mb"):
        main(["--base", str(runs / "base"), "--out", str(runs / "weights"), "--max-mb", "0.001"])


def test_a_continued_base_records_every_run_that_made_it(runs):
    continued = runs / "continued"
    shutil.copytree(runs / "base" / "model", continued / "model")
    config = dataclasses.asdict(load_base_config(CONFIGS / "shapes_base_continued.yaml"))
    config["diffusion"]["init_from"] = str(runs / "base" / "model")
    (continued / "model" / "train_base_config.yaml").write_text(yaml.safe_dump(config))
    main(["--base", str(continued), "--out", str(runs / "weights")])
    base = read_manifest(runs / "weights")["base"]
    assert base["made_by"] == ("python -m training.train_base --config configs/shapes_base.yaml && "
                               "python -m training.train_base --config configs/shapes_base_continued.yaml")
    assert base["steps"] == {"vae": 700, "diffusion": [6000, 2000]} and base["seed"] == 1
    assert base["continues"] == [yaml.safe_load((CONFIGS / "shapes_base.yaml").read_text())]

    (runs / "base" / "model" / "train_base_config.yaml").unlink()  # the continued model's record is gone
    with pytest.raises(SystemExit, match="has no train_base_config.yaml"):
        main(["--base", str(continued), "--out", str(runs / "weights2")])
