"""The base-model trainer: a tiny run trains both stages and writes a Stable Diffusion folder that the grounded
pipeline loads and samples from offline; a run stopped and resumed ends bit-identical to an uninterrupted one."""

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file
from training_fixtures import CONFIGS, reset_accelerate

from gligen_ext import PhraseEncoder, add_grounding_adapter
from gligen_ext.inject import transformer_blocks
from gligen_ext.pipelines import GroundedStableDiffusionPipeline
from training.base_config import load_base_config
from training.base_model import build_unet, write_word_tokenizer
from training.checkpoints import CRASH_ENV, list_checkpoints
from training.dataclass_io import ConfigError
from training.shapes_world_records import build_shapes_world
from training.train_base import main

REPO = Path(__file__).resolve().parent.parent
TINY = {  # seconds on one core: 32x32 images, 8x8 latents, narrow models
    "data.resolution": 32, "vae.block_out_channels": "[8,16,16]", "vae.norm_num_groups": 8, "vae.steps": 2,
    "vae.batch_size": 8, "vae.warmup_steps": 0, "text_encoder.hidden_size": 16, "text_encoder.intermediate_size": 32,
    "unet.block_out_channels": "[16,32]", "unet.norm_num_groups": 8, "diffusion.steps": 4, "diffusion.batch_size": 8,
    "diffusion.warmup_steps": 1, "diffusion.decay_steps": 2, "run.checkpoint_every": 2, "run.keep_checkpoints": 3,
    "log.every": 1, "log.sample_every": 2, "log.sample_count": 2, "log.eval_count": 2, "log.inference_steps": 2,
}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    build_shapes_world(root / "train", scenes=32, progress=False)
    build_shapes_world(root / "heldout", scenes=2, split="heldout", progress=False)
    return root


@pytest.fixture(autouse=True)
def fresh_accelerate():
    yield
    reset_accelerate()


def argv(records, output_dir, **overrides):
    values = TINY | {"data.train": records / "train", "data.heldout": records / "heldout",
                     "run.output_dir": output_dir} | {k.replace("__", "."): v for k, v in overrides.items()}
    return ["--config", str(CONFIGS / "shapes_base.yaml"), *[x for k, v in values.items() for x in (f"--{k}", str(v))]]


def test_tiny_run_saves_a_pipeline_the_grounded_pipeline_loads_and_samples(records, tmp_path):
    model = main(argv(records, tmp_path / "run"))
    index = json.loads((model / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    assert {"vae", "text_encoder", "tokenizer", "unet", "scheduler"} <= {p.name for p in model.iterdir()}
    pipe = GroundedStableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    assert pipe.vae.config.scaling_factor != 1.0  # measured from the latents, not the default
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32

    # the end token (where CLIP pools phrases for the adapters) is special: never inside a caption
    ids = pipe.tokenizer("a yellow triangle, a red circle and a person").input_ids
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id == ids[-1]
    assert ids.count(pipe.tokenizer.eos_token_id) == 1 and len(ids) == 12  # one token per word and comma
    assert PhraseEncoder(pipe.tokenizer, pipe.text_encoder)(["a red circle", "a blue square"]).shape == (2, 16)

    # adapters get gated layers at both resolutions of the UNet
    add_grounding_adapter(pipe.unet, "boxes")
    levels = {path.split(".")[0] + path.split(".")[1] for path, _ in transformer_blocks(pipe.unet)}
    assert {"down_blocks0", "down_blocks1", "up_blocks0", "up_blocks1"} <= levels
    out = pipe("a red circle", layout={"boxes": [{"box": [0.1, 0.1, 0.6, 0.6], "phrase": "a red circle"}]},
               num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()

    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step-0000002.png", "step-0000004.png", "vae-step-0000002.png"]
    scores = [json.loads(line) for line in (run / "fidelity.jsonl").read_text().splitlines()]
    assert [s["step"] for s in scores] == [2, 4] and all(0 <= s["caption_fidelity"] <= 1 for s in scores)


def test_killed_run_resumes_bit_identical_to_an_uninterrupted_run(records, tmp_path, caplog):
    reference = main(argv(records, tmp_path / "reference"))
    reset_accelerate()

    # killed (SIGKILL, no clean-up) while writing the diffusion stage's checkpoint-4: the complete checkpoint-2 stays
    killed = tmp_path / "killed"
    env = os.environ | {CRASH_ENV: "mid-diffusion-checkpoint-4", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "training.train_base", *argv(records, killed)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    assert [p.name for p in list_checkpoints(killed / "stage2-diffusion")] == ["checkpoint-2"]
    assert (killed / "stage2-diffusion" / ".checkpoint-4.tmp").is_dir() and not (killed / "model").exists()

    with pytest.raises(ConfigError, match="--resume latest"):  # a fresh run must not mix with the old checkpoints
        main(argv(records, killed))
    reset_accelerate()
    with caplog.at_level(logging.INFO):
        resumed = main([*argv(records, killed), "--resume", "latest"])
    assert "stage 1 was finished earlier" in caplog.text and "(step 2)" in caplog.text
    assert [p.name for p in list_checkpoints(killed / "stage2-diffusion")] == ["checkpoint-2", "checkpoint-4"]
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors"):
        want, got = load_file(reference / part), load_file(resumed / part)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), part


def test_continued_run_starts_from_the_saved_model_and_refuses_another_one(records, tmp_path):
    first = main(argv(records, tmp_path / "first"))
    reset_accelerate()
    # at lr 0 nothing moves, so the continuation saves exactly the model it started from, VAE included
    continued = main(argv(records, tmp_path / "continued", diffusion__init_from=first, diffusion__lr=0.0,
                          diffusion__ema_decay=0))
    assert not (tmp_path / "continued" / "stage1-vae").exists()  # stage 1 is the first run's
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors"):
        want, got = load_file(first / part), load_file(continued / part)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), part
    reset_accelerate()
    # a deeper UNet grows from the saved one: at lr 0 it still computes what the first run's did
    deeper = main(argv(records, tmp_path / "deeper", diffusion__init_from=first, diffusion__lr=0.0,
                       diffusion__ema_decay=0, unet__layers_per_block="[1,2]"))
    unets = [UNet2DConditionModel.from_pretrained(folder / "unet").eval() for folder in (first, deeper)]
    assert unets[1].config.layers_per_block == [1, 2]
    torch.manual_seed(0)
    inputs = (torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 32, 16))
    with torch.no_grad():
        torch.testing.assert_close(unets[1](*inputs).sample, unets[0](*inputs).sample, rtol=1e-5, atol=1e-5)
    reset_accelerate()
    with pytest.raises(ConfigError, match="diffusion.init_from: its unet"):
        main(argv(records, tmp_path / "other", diffusion__init_from=first, unet__block_out_channels="[16,16]"))
    reset_accelerate()
    with pytest.raises(ConfigError, match="not a pipeline folder"):
        main(argv(records, tmp_path / "nothing", diffusion__init_from=tmp_path / "first" / "samples"))


def test_word_tokenizer_keeps_each_word_whole_and_unknown_words_readable(tmp_path):
    tokenizer = write_word_tokenizer(tmp_path, ["red", "green", "triangle", "a"], max_length=16)
    assert [len(tokenizer(w).input_ids) for w in ("red", "green", "triangle", "a")] == [3, 3, 3, 3]
    assert tokenizer.decode(tokenizer("a purple triangle").input_ids, skip_special_tokens=True) == "a purple triangle"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*_base*.yaml")), ids=lambda p: p.stem)
def test_shipped_base_configs_parse(path):
    config = load_base_config(path)
    assert config.diffusion.caption_drop > 0  # classifier-free guidance needs unconditional examples


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unet.block_out_chanels"):
        load_base_config(CONFIGS / "shapes_base.yaml", ["--unet.block_out_chanels", "[8,16]"])
    with pytest.raises(ConfigError, match="data.resolution"):
        load_base_config(CONFIGS / "shapes_base.yaml", ["--data.resolution", "60"])
    with pytest.raises(ConfigError, match="v_prediction"):  # epsilon cannot sample from the cosine's last step
        load_base_config(CONFIGS / "shapes_base.yaml", ["--diffusion.prediction_type", "epsilon"])
    with pytest.raises(ConfigError, match="unet.layers_per_block"):  # one per level, or one for all
        load_base_config(CONFIGS / "shapes_base.yaml", ["--unet.layers_per_block", "[1,2]"])
    config = load_base_config(CONFIGS / "shapes_base.yaml", ["--diffusion.steps=700", "--diffusion.decay_steps=100"])
    assert config.diffusion.steps == 700 and config.unet.block_out_channels == [64, 128, 128]


def test_min_snr_weights_clip_the_high_snr_steps_and_keep_the_low_ones():
    from training.base_config import DiffusionConfig
    from training.base_model import noise_scheduler
    from training.train_base import min_snr_weights

    scheduler = noise_scheduler(DiffusionConfig())
    steps = torch.tensor([0, 500, 999])
    alpha_bar = scheduler.alphas_cumprod[steps].double()
    snr = alpha_bar / (1 - alpha_bar)
    v = min_snr_weights(scheduler, steps, gamma=5.0, prediction_type="v_prediction").double()
    eps = min_snr_weights(scheduler, steps, gamma=5.0, prediction_type="epsilon").double()
    assert torch.allclose(v, torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (snr + 1), rtol=1e-5)
    assert v[0] < 0.01 and v[2] < 1e-6  # t=0: SNR is huge, clipped to 5; t=T: no signal, nothing to learn
    assert eps[2] == 1.0 and eps[0] == pytest.approx(5.0 / snr[0].item(), rel=1e-5)


def test_decay_steps_follow_the_constant_schedule_then_fall_to_zero():
    from training.base_config import DiffusionConfig
    from training.train_base import diffusion_lr_schedule

    def lrs(recipe: DiffusionConfig) -> list[float]:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = diffusion_lr_schedule(recipe, optimizer)
        values = []
        for _ in range(recipe.steps):
            values.append(schedule.get_last_lr()[0])
            optimizer.step()
            schedule.step()
        return values

    constant = lrs(DiffusionConfig(steps=100, warmup_steps=10))
    cooled = lrs(DiffusionConfig(steps=100, warmup_steps=10, decay_steps=20))
    assert cooled[:80] == pytest.approx(constant[:80])  # an extended constant run can be cooled down on resume
    assert all(a > b for a, b in zip(cooled[80:], cooled[81:])) and cooled[-1] < 0.05


def test_decay_steps_errors_name_the_key():
    with pytest.raises(ConfigError, match="diffusion.decay_steps"):
        load_base_config(CONFIGS / "shapes_base.yaml", ["--diffusion.decay_steps", "99999"])
    with pytest.raises(ConfigError, match="diffusion.decay_steps"):
        load_base_config(CONFIGS / "shapes_base.yaml", ["--diffusion.decay_steps", "10",
                                                         "--diffusion.lr_scheduler", "cosine"])


def test_layers_per_block_may_deepen_the_low_resolution_levels():
    config = load_base_config(CONFIGS / "shapes_base.yaml", ["--unet.layers_per_block", "[1,2,2]"])
    assert config.unet.layers_per_block == [1, 2, 2]
    unet = build_unet(config.unet, latent_size=16, latent_channels=4, cross_attention_dim=128)
    assert [len(block.resnets) for block in unet.down_blocks] == [1, 2, 2]
    assert [len(block.attentions) for block in unet.up_blocks] == [3, 3, 2]  # diffusers: one more on the way up
    assert load_base_config(CONFIGS / "shapes_base.yaml").unet.layers_per_block == 1


def test_the_continued_config_inherits_the_first_and_changes_only_its_recipe():
    first = dataclasses.asdict(load_base_config(CONFIGS / "shapes_base.yaml"))
    continued = dataclasses.asdict(load_base_config(CONFIGS / "shapes_base_continued.yaml"))
    assert {name for name in first if first[name] != continued[name]} == {"diffusion", "run"}
    assert continued["diffusion"]["init_from"] == first["run"]["output_dir"] + "/model"
