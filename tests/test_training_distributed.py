"""Two CPU processes (gloo, ``accelerate launch``) train the same adapter as one process with the same global batch:
each example's randomness follows its dataset index, not the process that happens to handle it."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from training_fixtures import CONFIGS, reset_accelerate, tiny_overrides, write_tiny_base, write_tiny_records

from training.train import main

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    base = write_tiny_base(tmp_path / "sd")
    records = write_tiny_records(tmp_path / "data", count=8)

    def argv(output_dir, batch_size):
        overrides = tiny_overrides(base, records, output_dir, train__max_steps=3, train__batch_size=batch_size,
                                   train__checkpoint_every=100, adapter__modalities="boxes,keypoints,depth")
        return ["--config", str(CONFIGS / "tiny.yaml"), *overrides]

    try:
        single = load_file(main(argv(tmp_path / "one", batch_size=4)))
    finally:
        reset_accelerate()
    # accelerate 1.15 starts CPU processes through torchrun only with --multi_gpu; ACCELERATE_USE_CPU keeps them
    # on the CPU with the gloo backend
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "training.train", *argv(tmp_path / "two", batch_size=2),
    ]
    env = os.environ | {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 processes" in run.stderr
    double = load_file(tmp_path / "two" / "grounding_adapter.safetensors")

    assert double.keys() == single.keys()
    # the same up to fp32 summation order (gradients are averaged across processes instead of within one batch)
    torch.testing.assert_close(double, single, rtol=1e-5, atol=1e-6)
    initial = {k: v for k, v in single.items() if k.endswith("alpha_attn")}
    assert any(float(v) != 0.0 for v in initial.values())  # the runs trained: the gates moved off zero
