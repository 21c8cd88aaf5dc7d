"""Checkpoints lose nothing: a run killed mid-way and resumed ends bit-identical to an uninterrupted run, and a
crash while a checkpoint is written leaves no torn checkpoint behind."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import CONFIGS, reset_accelerate, tiny_overrides, write_tiny_base, write_tiny_records

from training.checkpoints import CRASH_ENV, list_checkpoints
from training.train import main

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_accelerate():
    yield
    reset_accelerate()


def test_killed_run_resumes_bit_identical_to_an_uninterrupted_run(tmp_path):
    base = write_tiny_base(tmp_path / "sd")
    records = write_tiny_records(tmp_path / "data", count=8)  # 4 batches per epoch: the run crosses an epoch

    def argv(output_dir):
        overrides = tiny_overrides(base, records, output_dir, train__max_steps=6, train__checkpoint_every=2,
                                   train__keep_checkpoints=5, adapter__modalities="boxes,keypoints,depth")
        return ["--config", str(CONFIGS / "tiny.yaml"), *overrides]

    reference = load_file(main(argv(tmp_path / "reference")))
    reset_accelerate()

    # killed (SIGKILL, no clean-up) in the middle of writing checkpoint-4: its folder is complete but not renamed
    interrupted = tmp_path / "interrupted"
    env = os.environ | {CRASH_ENV: "mid-checkpoint-4", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-m", "training.train", *argv(interrupted)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name for p in list_checkpoints(interrupted)] == ["checkpoint-2"]
    assert (interrupted / ".checkpoint-4.tmp").is_dir()
    assert not (interrupted / "grounding_adapter.safetensors").exists()

    resumed = load_file(main([*argv(interrupted), "--resume", "latest"]))
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[key], reference[key]) for key in reference)
    assert [p.name for p in list_checkpoints(interrupted)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert not (interrupted / ".checkpoint-4.tmp").exists()
    # the check can fail: training did change the adapter between checkpoints
    early = load_file(interrupted / "checkpoint-2" / "grounding_adapter.safetensors")
    assert not all(torch.equal(early[key], reference[key]) for key in reference)


def test_resume_latest_without_checkpoints_starts_fresh_and_a_bad_path_is_an_error(tmp_path):
    from training.checkpoints import CheckpointError, resolve_resume

    assert resolve_resume("latest", tmp_path / "nothing-yet") is None
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        resolve_resume(str(tmp_path), tmp_path)


def test_only_the_last_k_checkpoints_are_kept(tmp_path):
    base = write_tiny_base(tmp_path / "sd")
    records = write_tiny_records(tmp_path / "data", count=4)
    overrides = tiny_overrides(base, records, tmp_path / "run", train__max_steps=4, train__checkpoint_every=1,
                               train__keep_checkpoints=2)
    main(["--config", str(CONFIGS / "tiny.yaml"), *overrides])
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-3", "checkpoint-4"]
    assert not any(p.name.startswith(".") for p in (tmp_path / "run").iterdir())
