"""The benchmark suite stays runnable: ``python -m benchmarks.run --quick`` on tiny models, in-process.

Only the shape of the result is checked; no figure is ever asserted (timings belong to benchmarks, not tests).
"""

import json
from pathlib import Path

import pytest

from benchmarks.run import SECTIONS, main, write_doc


def test_quick_run_writes_every_section(tmp_path):
    out, doc = tmp_path / "cpu-quick.json", tmp_path / "performance.md"
    assert main(["--quick", "--out", str(out), "--doc", str(doc)]) == 0
    results = json.loads(out.read_text())
    assert results["quick"] is True and results["device"] == "cpu" and results["setup"] == "tiny"
    assert {"date", "torch", "diffusers", "platform"} <= set(results["machine"])
    assert set(SECTIONS) <= set(results)
    assert results["cuda"] == {"skipped": "runs only with --device cuda"}
    step = results["unet_step"]
    assert {"base_step_s", "settings"} <= set(step)
    assert set(step["settings"]) == {"boxes", "keypoints", "depth", "all three"}
    for row in step["settings"].values():
        assert {"step_s", "ratio", "flop_floor"} <= set(row)
        assert {"median", "low", "high", "runs"} == set(row["ratio"])
    assert {"time_ratio", "memory_ratio", "peak_memory_bytes", "max_abs_difference"} <= set(
        results["versus_diffusers_step"]
    )
    generation = results["generation"]
    assert set(generation["grounded_over_base"]) == {"beta 0.3", "beta 1.0"}
    assert {"time_ratio", "memory_ratio"} <= set(generation["versus_diffusers"])
    assert {"time_ratio", "memory_ratio"} <= set(results["training_step"])
    assert {"speedup", "cached_epoch_s", "uncached_epoch_s"} <= set(results["data_cache"])
    assert "fp16_file_bytes" in results["adapter_files"]["adapters"]["boxes"]
    page = doc.read_text()
    assert "Quick run" in page and "Targets (issue 7)" in page


def test_sections_subset(tmp_path):
    out = tmp_path / "subset.json"
    assert main(["--quick", "--sections", "adapter_files", "--out", str(out), "--doc", str(tmp_path / "p.md")]) == 0
    results = json.loads(out.read_text())
    assert "adapter_files" in results and "unet_step" not in results


def test_full_page_reads_only_the_device_result_files(tmp_path):
    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu.json"
    cpu = json.loads(committed.read_text())
    (tmp_path / "cpu.json").write_text(json.dumps(cpu))
    (tmp_path / "grounding.json").write_text(json.dumps({"settings": []}))  # another benchmark's results
    write_doc(tmp_path / "performance.md", tmp_path, cpu)
    assert "## cpu" in (tmp_path / "performance.md").read_text()


def test_base_unet_cost_variants_are_the_shipped_unet_with_more_layers():
    import torch

    from benchmarks.base_unet_cost import seconds_per_step, shapes_unet

    shipped, deeper = shapes_unet(1), shapes_unet((1, 2, 2))
    assert shipped.config.block_out_channels == deeper.config.block_out_channels == (64, 128, 128)
    assert sum(p.numel() for p in deeper.parameters()) > sum(p.numel() for p in shipped.parameters())
    assert [len(block.resnets) for block in deeper.down_blocks] == [1, 2, 2]
    before = [p.detach().clone() for p in shipped.parameters()]
    assert seconds_per_step(shipped, steps=1, batch_size=2, warmup=0) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, shipped.parameters()))  # it trained


def test_base_unet_cost_weighs_what_the_shipped_files_weigh():
    from benchmarks.base_unet_cost import shapes_unet, shipped_bytes
    from gligen_ext.shapes_world.shipped import WEIGHTS_DIR as WEIGHTS

    files = [WEIGHTS / "base" / "unet" / "diffusion_pytorch_model.safetensors", *(WEIGHTS / "adapters").glob("*")]
    unet = shapes_unet(json.loads((WEIGHTS / "base" / "unet" / "config.json").read_text())["layers_per_block"])
    names = [name for name, _ in unet.named_parameters()]
    assert shipped_bytes(unet) == pytest.approx(sum(f.stat().st_size for f in files), rel=0.01)
    assert [name for name, _ in unet.named_parameters()] == names  # the adapters it weighed are gone
    assert shipped_bytes(shapes_unet((2, 2, 2))) > shipped_bytes(unet)
