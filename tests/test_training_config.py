"""Training configs: every shipped YAML parses, unknown keys fail with a suggestion, CLI overrides are typed."""

import dataclasses

import pytest
import yaml
from training_fixtures import CONFIGS

from training.config import Config, ConfigError, load_config, save_config
from training.train import parse_args

# tiny: tests only; *_base: base models trained from scratch (training/train_base.py, tests/test_train_base.py);
# shapes_*: the shapes-world adapters, a CPU-sized recipe (training/SHAPES_WORLD.md)
REAL_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml")
                      if not p.stem.endswith(("tiny", "_base")) and not p.stem.startswith("shapes_"))
SHAPES_ADAPTER_CONFIGS = sorted(p for p in CONFIGS.glob("shapes_*.yaml") if not p.stem.startswith("shapes_base"))


def test_configs_folder_has_one_per_modality_and_base():
    assert {p.name for p in REAL_CONFIGS} >= {
        "boxes_sd15.yaml", "keypoints_sd15.yaml", "depth_sd15.yaml", "multi_sd15.yaml", "boxes_sdxl.yaml"
    }


@pytest.mark.parametrize("path", REAL_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_parses_and_follows_the_gligen_recipe(path):
    config = load_config(path)
    assert config.train.lr == 5e-5 and config.train.weight_decay == 0.0
    assert config.train.lr_scheduler == "constant_with_warmup" and config.train.warmup_steps == 10_000
    assert config.train.grounding_drop == 0.1
    # GLIGEN drops box captions half the time, never keypoint or spatial captions (gligen.md Sec. 3)
    if config.adapter.modalities == ["boxes"]:
        assert config.train.caption_drop == 0.5
    elif "boxes" not in config.adapter.modalities:
        assert config.train.caption_drop == 0.0


@pytest.mark.parametrize("path", SHAPES_ADAPTER_CONFIGS, ids=lambda p: p.stem)
def test_shapes_world_adapter_configs_parse_and_train_on_the_shapes_base(path):
    config = load_config(path)
    assert config.model.pretrained == "gligen_ext/shapes_world/weights/base" and config.data.resolution == 64
    assert config.train.grounding_drop == 0.1 and config.data.flip_prob == 0.0
    assert config.train.caption_drop == (0.5 if "boxes" in config.adapter.modalities else 0.0)
    assert config.train.output_dir == f"runs/{path.stem}"


@pytest.mark.parametrize("name", ["tiny", "points_tiny"])
def test_tiny_configs_parse_with_their_required_overrides(name):
    config = load_config(CONFIGS / f"{name}.yaml", ["--model.pretrained", "x", "--data.train", "y"])
    assert config.model.pretrained == "x" and config.data.train == "y"


def test_cli_overrides_are_converted_to_the_field_types():
    config, resume = parse_args([
        "--config", str(CONFIGS / "boxes_sd15.yaml"), "--train.lr", "1e-4", "--data.resolution=64",
        "--train.gradient_checkpointing", "false", "--adapter.modalities", "boxes,depth",
        "--adapter.tokenizer_options.depth.grid_size", "4", "--train.max_grad_norm", "none", "--resume", "latest",
    ])
    assert resume == "latest"
    assert config.train.lr == 1e-4 and isinstance(config.train.lr, float)
    assert config.data.resolution == 64 and isinstance(config.data.resolution, int)
    assert config.train.gradient_checkpointing is False
    assert config.adapter.modalities == ["boxes", "depth"]
    assert config.adapter.tokenizer_options == {"depth": {"grid_size": 4}}
    assert config.train.max_grad_norm is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--train.lrr", "1"], "did you mean 'train.lr'"),
        (["--lr", "1"], "did you mean 'train.lr'"),
        (["--trian.lr", "1"], "did you mean 'train.lr'"),
        (["--data.resolution", "big"], "data.resolution: expected a number"),
        (["--data.resolution", "64.5"], "expected a whole number"),
        (["--train.mixed_precision", "fp8"], "train.mixed_precision"),
        (["--train.caption_drop", "1.5"], "train.caption_drop"),
        (["--adapter.modalities", "box"], "did you mean 'boxes'"),
        (["--adapter.modalities", "image_boxes"], "training records carry no image_boxes"),
        (["--train.lr_scheduler", "constant_warmup"], "did you mean 'constant_with_warmup'"),
        (["--adapter.tokenizer_options.boxes.max_obj", "3"], "did you mean 'max_objs'"),
        (["--train.lr"], "needs a value"),
        (["--adapter.ff_mult", "0"], "adapter.ff_mult: a positive integer"),
    ],
)
def test_bad_cli_overrides_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "boxes_sd15.yaml", overrides)


def test_unknown_yaml_keys_fail_with_a_suggestion(tmp_path):
    raw = yaml.safe_load((CONFIGS / "boxes_sd15.yaml").read_text())
    for section, key, expected in (("train", "learning_rate", None), ("data", "resolutoin", "resolution"),
                                   ("tarin", None, "train")):
        broken = {k: dict(v) for k, v in raw.items()}
        if key is None:
            broken[section] = broken.pop("train")
        else:
            broken[section][key] = 1
        path = tmp_path / "broken.yaml"
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ConfigError, match="unknown key") as error:
            load_config(path)
        if expected:
            assert f"did you mean '{expected}'" in str(error.value)


def test_unquoted_yaml_no_gets_a_hint(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {train: x}\ntrain: {mixed_precision: no}\n")
    with pytest.raises(ConfigError, match="quote"):
        load_config(path)


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_config(CONFIGS / "multi_sd15.yaml", ["--train.lr", "2e-4", "--log.report_to", "tensorboard"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert dataclasses.asdict(again) == dataclasses.asdict(config)
    assert isinstance(again, Config)


def test_a_config_inherits_another_and_states_only_its_changes(tmp_path):
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump({
        "model": {"pretrained": "some/model"}, "adapter": {"modalities": ["boxes"]}, "data": {"train": "records"},
        "train": {"lr": 1.0e-4, "max_steps": 100, "output_dir": "runs/parent"}}))
    (tmp_path / "child").mkdir()
    (tmp_path / "child" / "child.yaml").write_text(yaml.safe_dump({
        "inherits": "../parent.yaml", "adapter": {"modalities": ["keypoints"]}, "train": {"max_steps": 7}}))
    config = load_config(tmp_path / "child" / "child.yaml", ["--train.lr", "2e-4"])
    assert config.model.pretrained == "some/model"
    assert config.adapter.modalities == ["keypoints"]  # a list replaces the inherited one whole
    assert (config.train.max_steps, config.train.output_dir, config.train.lr) == (7, "runs/parent", 2e-4)


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": {"inherits": "missing.yaml"}}, r"missing.yaml' \(inherited by"),
    ({"a.yaml": {"inherits": "b.yaml"}, "b.yaml": {"inherits": "a.yaml"}}, "'inherits' loops"),
    ({"a.yaml": {"inherits": ["b.yaml"]}}, "takes the path of one config file"),
])
def test_bad_inheritance_names_the_file_and_the_fix(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "a.yaml")
