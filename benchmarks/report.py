"""Markdown for ``docs/performance.md`` from the result documents of :mod:`benchmarks.run`, with issue 7's targets."""

from __future__ import annotations

from collections.abc import Callable

HEADER = """# Performance

Measured by `python -m benchmarks.run` (add `--device cuda` on a GPU). Every model is SD-1.5-shaped and built from its
published config with random weights (speed and size do not depend on the values), so nothing is downloaded. Every
ratio is taken per round between variants run interleaved in one process, after warm-up; a cell shows the median and,
in brackets, the lowest and highest of the rounds. CPU peak memory is the growth of the resident set size during one
call, sampled every millisecond, with glibc made to return freed blocks at once; CUDA peak memory is the allocator's
peak above what was held before the call. Raw figures: `benchmarks/results/<device>.json`.
"""
PROFILE = """
**Where a grounded step's time goes** (`torch.profiler`, one SD-1.5 UNet step at 256², batch 2, boxes, one thread,
2026-12-05): convolutions 48 %, linear layers 40 %, attention (SDPA) 8 %. Against the base step the gated layers add
48 matrix products with bias (each layer's output projection and its GEGLU feed-forward), 48 without (the visual
queries, keys and values) and 16 attentions over 30 extra keys; nothing runs on the grounding tokens per step, since
the tokens and every layer's grounding keys and values are computed once per generation, and a layer at β = 0 returns
at once. diffusers' gated UNet on the same weights runs 19 more matrix products per step (its position net and each
layer's token projection) and 30 more query rows per layer; both pay the same essential work, so on a CPU the two
differ by a few per cent.
"""
QUICK = """
> **Quick run.** These figures come from `--quick`: tiny models and two rounds, a smoke test of the suite. They say
> nothing about SD-1.5; run `python -m benchmarks.run` for those.
"""
PENDING = """
No full run has been recorded yet: `python -m benchmarks.run` (SD-1.5 shapes on the CPU, about half an hour on two
cores) writes `benchmarks/results/cpu.json` and renders this page with its tables and issue 7's targets.
"""
NO_GPU = """
## CUDA

No GPU machine has run this suite yet. The CUDA section is written (`benchmarks/cuda.py`: xformers against SDPA
against plain attention, fp32/fp16/bf16, 512² 50-step generations with peak VRAM) and runs with
`python -m benchmarks.run --device cuda`.
"""


def spread(s: dict, digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} ({s['low']:.{digits}f}–{s['high']:.{digits}f})"


def seconds(s: dict) -> str:
    return f"{s['median']:.3f} s" if s["median"] >= 0.01 else f"{s['median'] * 1e3:.2f} ms"


def size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def table(head: list[str], rows: list[list[str]]) -> str:
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"
    lines = ["| " + " | ".join(head) + " |", rule]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def unet_step(r: dict) -> str:
    rows = [["base", seconds(r["base_step_s"]), "1", "1"]]
    rows += [[name, seconds(row["step_s"]), spread(row["ratio"]), f"{row['flop_floor']:.3f}"]
             for name, row in r["settings"].items()]
    return (f"### Per-step UNet, grounded ÷ base\n\n{r['image_size']}², batch {r['batch']} (one image with CFG), "
            "every token slot in use, gates on. The floor counts the tokenizers and the gated layers' projections of "
            "the grounding tokens at every step; gligen-ext computes those once per generation, so a ratio can fall "
            "below it.\n\n"
            + table(["setting", "step", "grounded ÷ base", "FLOP floor"], rows))


def _step_and_memory_rows(r: dict) -> list[list[str]]:
    """One row per entry of ``r["step_s"]``: its name, step time and peak memory."""
    return [[name, seconds(s), size(r["peak_memory_bytes"][name])] for name, s in r["step_s"].items()]


def versus_step(r: dict) -> str:
    rows = _step_and_memory_rows(r)
    return (f"### Per-step UNet, gligen-ext ÷ diffusers' GLIGEN UNet\n\n{r['image_size']}², batch {r['batch']}, boxes "
            f"(30 tokens), identical weights (largest output difference {r['max_abs_difference']:.1e}).\n\n"
            + table(["UNet", "step", "peak memory"], rows)
            + f"\ntime ratio {spread(r['time_ratio'])}, peak-memory ratio {r['memory_ratio']:.3f}\n")


def generation(r: dict) -> str:
    ratios = dict(r["grounded_over_base"]) | {"diffusers beta 0.3": r["versus_diffusers"]["diffusers_over_base"]}
    rows = [[name, seconds(s), spread(ratios[name]) if name in ratios else "1"]
            for name, s in r["generation_s"].items()]
    v = r["versus_diffusers"]
    return (f"### Whole generation\n\n{r['image_size']}², {r['steps']} DDIM steps, guidance {r['guidance_scale']}, "
            f"{r['boxes']} boxes, text encoding and VAE decoding included.\n\n"
            + table(["run", "generation", "÷ base"], rows)
            + f"\ngligen-ext ÷ diffusers' `StableDiffusionGLIGENPipeline` at β = 0.3: time {spread(v['time_ratio'])}, "
            f"peak memory {v['memory_ratio']:.3f} ({size(v['peak_memory_bytes']['gligen-ext'])} against "
            f"{size(v['peak_memory_bytes']['diffusers'])})\n")


def training(r: dict) -> str:
    rows = _step_and_memory_rows(r)
    return (f"### Training step\n\n{r['image_size']}², batch {r['batch']}, box adapter "
            f"({r['trained_params']:,} trained, {r['frozen_params']:,} frozen parameters), AdamW.\n\n"
            + table(["gradients", "step", "peak memory"], rows)
            + f"\nadapter-only ÷ all gradients: time {spread(r['time_ratio'])}, peak memory {r['memory_ratio']:.3f}\n")


def data(r: dict) -> str:
    return (f"### Cached latents and phrase embeddings\n\n{r['images']} images at {r['resolution']}²: an epoch's data "
            f"work takes {r['uncached_epoch_s']:.2f} s uncached and {r['cached_epoch_s']:.2f} s cached, "
            f"**{r['speedup']}×** the throughput; building the cache once takes {r['cache_build_s']:.2f} s "
            f"(paid back after {r['break_even_epochs']} epochs).\n")


def files(r: dict) -> str:
    rows = [[name, f"{row['gated_layer_params'] + row['tokenizer_params']:,}", size(row["fp16_file_bytes"])]
            for name, row in r["adapters"].items()]
    box = r["adapters"]["boxes"]["fp16_file_bytes"]
    rows += [[name, "", f"{size(n)} ({n / box:.1f}× the box adapter)"] for name, n in r["reference_bytes"].items()]
    return "### Adapter files (fp16)\n\n" + table(["file", "parameters", "size"], rows)


def cuda(r: dict) -> str:
    if "skipped" in r:
        return ""
    a = r["attention_backends"]
    rows = [[name, *(["skipped: " + row["skipped"], "", ""] if "skipped" in row else
                     [seconds(row["step_s"]), size(row["peak_memory_bytes"]), f"{row['time_over_sdpa']:.3f}"])]
            for name, row in a["backends"].items()]
    out = (f"### Attention backends ({r['device_name']})\n\n{a['image_size']}², batch {a['batch']}, {a['dtype']}, "
           "boxes, gated layers on the same backend.\n\n" + table(["backend", "step", "peak memory", "÷ SDPA"], rows))
    p = r["precisions"]["precisions"]
    rows = [[name, seconds(row["base_step_s"]), seconds(row["grounded_step_s"]), spread(row["grounded_over_base"]),
             f"{row['speedup_over_fp32']:.2f}×"] for name, row in p.items()]
    out += "\n### Precisions\n\n" + table(["dtype", "base step", "grounded step", "grounded ÷ base", "vs fp32"], rows)
    g = r["generation"]
    rows = [[name, seconds(s), spread(g["grounded_over_base"][name]) if name in g["grounded_over_base"] else "1",
             size(g["peak_memory_bytes"][name])] for name, s in g["generation_s"].items()]
    return out + (f"\n### {g['image_size']}² generation, {g['steps']} steps, {g['dtype']}, {g['attention']}\n\n"
                  + table(["run", "generation", "÷ base", "peak VRAM"], rows))


def targets(r: dict) -> str:
    """Issue 7's targets against this document's figures."""
    checks: list[tuple[str, Callable[[], tuple[float, float]]]] = [
        ("per-step boxes ÷ base ≤ FLOP floor + 0.03", lambda: (
            r["unet_step"]["settings"]["boxes"]["ratio"]["median"],
            r["unet_step"]["settings"]["boxes"]["flop_floor"] + 0.03)),
        ("generation at β = 0.3 ÷ base ≤ 1.15", lambda: (
            r["generation"]["grounded_over_base"]["beta 0.3"]["median"], 1.15)),
        ("generation, gligen-ext ÷ diffusers time ≤ 0.95", lambda: (
            r["generation"]["versus_diffusers"]["time_ratio"]["median"], 0.95)),
        ("generation, gligen-ext ÷ diffusers peak memory ≤ 1.0", lambda: (
            r["generation"]["versus_diffusers"]["memory_ratio"], 1.0)),
        ("per step, gligen-ext ÷ diffusers time ≤ 0.95", lambda: (
            r["versus_diffusers_step"]["time_ratio"]["median"], 0.95)),
        ("per step, gligen-ext ÷ diffusers peak memory ≤ 1.0", lambda: (
            r["versus_diffusers_step"]["memory_ratio"], 1.0)),
        ("training step ÷ all-gradients step, time ≤ 0.75", lambda: (
            r["training_step"]["time_ratio"]["median"], 0.75)),
        ("training step ÷ all-gradients step, peak memory ≤ 0.8", lambda: (r["training_step"]["memory_ratio"], 0.8)),
        ("box adapter fp16 ≤ 420 MB", lambda: (r["adapter_files"]["adapters"]["boxes"]["fp16_file_bytes"] / 1e6, 420)),
    ]
    rows = []
    for name, check in checks:
        try:
            value, limit = check()
        except KeyError:  # section not run
            continue
        rows.append([name, f"{value:.3f}", f"{limit:.3f}", "met" if value <= limit else "**missed**"])
    return "### Targets (issue 7)\n\n" + table(["target", "measured", "limit", ""], rows) if rows else ""


def section(key: str, r: dict) -> str:
    m = r["machine"]
    where = f"{m.get('gpu', m['processor'])}, {m['cpu_count']} CPU cores ({m['torch_threads']} torch threads)"
    out = [f"## {key}\n\n{m['date']} · {where} · {m['platform']} · Python {m['python']} · torch {m['torch']} · "
           f"diffusers {m['diffusers']} · set-up `{r['setup']}` · {r['seconds'].get('total', 0):.0f} s in all\n"]
    for name, render_section in (("unet_step", unet_step), ("versus_diffusers_step", versus_step),
                                 ("generation", generation), ("training_step", training), ("data_cache", data),
                                 ("adapter_files", files), ("cuda", cuda)):
        if name in r:
            out.append(render_section(r[name]))
    out.append(targets(r))
    return "\n".join(part for part in out if part)


def render(documents: dict[str, dict]) -> str:
    """The whole page: one section per result document (keyed ``cpu``, ``cuda``, ``cpu-quick`` ...)."""
    quick = any(d["quick"] for d in documents.values())
    parts = [HEADER + PROFILE + (QUICK if quick else "")]
    parts += [section(key, r) for key, r in documents.items()] or [PENDING]
    if not any(d["device"] == "cuda" for d in documents.values()):
        parts.append(NO_GPU)
    return "\n".join(parts)
