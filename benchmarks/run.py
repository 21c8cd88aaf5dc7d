"""The benchmark suite's one entry point: every figure of issue 7, as ratios measured in one process.

    python -m benchmarks.run                # SD-1.5 shapes, CPU -> benchmarks/results/cpu.json, docs/performance.md
    python -m benchmarks.run --device cuda  # + the GPU section -> benchmarks/results/cuda.json, docs/performance.md
    python -m benchmarks.run --quick        # tiny models, seconds -> benchmarks/results/cpu-quick.json and .md

Models are built from their published configs with random weights (speed and size do not depend on the values), so
nothing is downloaded. ``--sections`` runs a subset; the JSON then holds only those. The Markdown page is rendered
from every full result file in ``benchmarks/results/`` (so a CPU run keeps the committed CUDA table and vice versa);
a quick run writes its own page beside its JSON unless ``--doc`` says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import platform
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import diffusers
import torch

from . import adapter_sizes, data_cache
from .cuda import cuda_section
from .generation import generation_times
from .measure import pin_cpu_allocator
from .report import render
from .setups import Setup, setup_for
from .training_step import training_steps
from .unet_steps import grounded_steps, versus_diffusers

RESULTS = Path(__file__).parent / "results"
DOC = Path(__file__).parent.parent / "docs" / "performance.md"
logger = logging.getLogger("benchmarks")


def adapter_files(setup: Setup, device: torch.device) -> dict:
    """fp16 adapter file sizes on the run's UNet, and the published sizes they are compared with."""
    return {"adapters": adapter_sizes.measure(setup.unet()), "reference_bytes": adapter_sizes.REFERENCE_BYTES}


def cached_data(setup: Setup, device: torch.device) -> dict:
    """Throughput of an epoch's data work with and without cached latents and phrase embeddings (CPU work)."""
    quick = setup.name == "tiny"
    datasets.disable_progress_bars()
    return data_cache.measure(setup.name, images=8 if quick else 16, resolution=None, batch_size=4 if quick else 8)


SECTIONS: dict[str, Callable[[Setup, torch.device], dict]] = {
    "unet_step": grounded_steps,
    "versus_diffusers_step": versus_diffusers,
    "generation": generation_times,
    "training_step": training_steps,
    "data_cache": cached_data,
    "adapter_files": adapter_files,
    "cuda": cuda_section,
}


def machine(device: torch.device) -> dict:
    """Where and with what the figures were measured."""
    info = {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": torch.multiprocessing.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def run(*, quick: bool, device: torch.device, sections: list[str]) -> dict:
    """Measure ``sections`` and return the result document (machine info, set-up, one entry per section)."""
    setup = setup_for(quick=quick, device=device)
    pinned = device.type == "cpu" and pin_cpu_allocator()
    results: dict = {"quick": quick, "device": device.type, "setup": setup.name, "machine": machine(device),
                     "cpu_allocator_pinned": pinned, "seconds": {}}
    for name in sections:
        if name == "cuda" and device.type != "cuda":
            results[name] = {"skipped": "runs only with --device cuda"}
            continue
        logger.info("measuring %s", name)
        start = time.perf_counter()
        results[name] = SECTIONS[name](setup, device)
        results["seconds"][name] = round(time.perf_counter() - start, 1)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def write_doc(path: Path, results_folder: Path, current: dict) -> None:
    """Render the page from every full result file, plus ``current`` (a quick run renders only itself)."""
    documents = {} if current["quick"] else {
        # one file per device; other benchmarks (grounding.json) share the folder
        file.stem: json.loads(file.read_text())
        for file in (results_folder / f"{device}.json" for device in ("cpu", "cuda"))
        if file.is_file()
    }
    documents[current["device"] + ("-quick" if current["quick"] else "")] = current
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(documents))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and few rounds: a smoke run in seconds")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/<device>[-quick].json)")
    parser.add_argument("--doc", type=Path, help="Markdown page (default docs/performance.md; for --quick, the "
                        "JSON path with .md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    suffix = "-quick" if args.quick else ""
    out = args.out or RESULTS / f"{device.type}{suffix}.json"
    doc = args.doc or (out.with_suffix(".md") if args.quick else DOC)
    start = time.perf_counter()
    results = run(quick=args.quick, device=device, sections=args.sections)
    results["seconds"]["total"] = round(time.perf_counter() - start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    write_doc(doc, out.parent, results)
    logger.info("wrote %s and %s in %.1f s", out, doc, results["seconds"]["total"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
