"""Write a benchmark result as JSON, a markdown page (``docs/grounding.md``) and a picture of example layouts.

The page is generated, never edited: its header gives the command, seeds, sampling settings and what the FID
column measures, so that anyone can regenerate the same numbers.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..viz import draw_layout, image_grid, overlay_layout
from .evaluate import BenchmarkResult, SettingResult, full_layout
from .scoring import OBJECT_COUNTS, pooled_success

CELL = 160  # picture cell side in pixels: 64-pixel images are scaled up so the layout labels stay legible


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def fid_label(result: BenchmarkResult) -> str:
    return "FID" if result.provenance["fid_features"] == "inception" else "FID (substitute)"


def summary_table(result: BenchmarkResult) -> str:
    """Every setting by every metric, as a markdown table (also what ``gligen-ext eval`` prints)."""
    radius = result.options.pck_radius
    header = ["setting", "β", "box mIoU", "box success", "image success", f"PCK@{radius:g}px", "depth IoU",
              "caption fidelity", fid_label(result)]  # fmt: skip
    rows = [
        [row.name, "–" if row.beta is None else f"{row.beta:g}", _number(row.scores.box_miou),
         _number(row.scores.box_success), _number(row.scores.image_success), _number(row.scores.pck),
         _number(row.scores.depth_iou), _number(row.scores.caption_fidelity), _number(row.scores.fid)]
        for row in result.settings
    ]  # fmt: skip
    return "\n".join(_table(header, rows))


def _by_objects_table(result: BenchmarkResult) -> list[str]:
    header = ["setting"] + [f"{n} object{'s' if n > 1 else ''}" for n in OBJECT_COUNTS]
    header += ["1–3 objects", "all (image success)"]
    counts = result.settings[0].scores.by_objects
    sizes = [f"{counts[n].boxes} / {counts[n].layouts}" for n in OBJECT_COUNTS]
    rows = [["*(shape boxes / layouts)*", *sizes, "", ""]]
    for row in result.settings:
        cells = [_number(row.scores.by_objects[n].success) for n in OBJECT_COUNTS]
        pooled = _number(pooled_success(row.scores.by_objects))
        rows.append([row.name, *cells, pooled, _number(row.scores.image_success)])
    return _table(header, rows)


def _sweep_table(result: BenchmarkResult) -> list[str]:
    radius = result.options.pck_radius
    header = ["grounding_beta", "box success", f"PCK@{radius:g}px", "depth IoU", "caption fidelity", fid_label(result)]
    rows = [
        [f"{row.beta:g}", _number(row.scores.box_success), _number(row.scores.pck), _number(row.scores.depth_iou),
         _number(row.scores.caption_fidelity), _number(row.scores.fid)]
        for row in result.sweep()
    ]  # fmt: skip
    return _table(header, rows)


def _wrapped_command(command: str | None) -> list[str]:
    """The command as an indented block, one option per line."""
    if command is None:
        return ["    (run from Python: gligen_ext.shapes_world.evaluate.run_benchmark)"]
    groups: list[str] = []
    for word in shlex.split(command):
        if word.startswith("--") or not groups:
            groups.append(shlex.quote(word))
        else:
            groups[-1] += " " + shlex.quote(word)
    lines = ["    " + groups[0]] + ["      " + group for group in groups[1:]]
    return [line + " \\" for line in lines[:-1]] + lines[-1:]


def _how_made(result: BenchmarkResult) -> list[str]:
    options, record = result.options, result.provenance
    size, radius = record["image_size"], options.pck_radius
    first, last = record["layout_seeds"]
    adapters = "; ".join(
        f"`{name}` = `{info['file']}` ({'+'.join(info['modalities'])}, sha256 {info['sha256']})"
        for name, info in record["adapters"].items()
    )
    return [
        "Regenerate with:",
        "",
        *_wrapped_command(record.get("command")),
        "",
        f"- **Base model** `{record.get('base', '?')}`; adapters: {adapters or 'none'}. gligen-ext "
        f"{record['gligen_ext_version']}.",
        f"- **Layouts**: {options.layouts} held-out shapes-world scenes, seeds {first}–{last} (training uses seeds "
        f"below {first}): 1–4 objects in turn, a stick figure in every third, no two objects overlapping, so every "
        "object stays visible; the prompt is the scene's caption.",
        f"- **Sampling**: {record['scheduler']}, {options.steps} steps, guidance scale {options.guidance_scale:g}, "
        f"{size}×{size} pixels; layout *i* starts from the noise of generator seed {options.seed} + *i* in every "
        f"setting. Adapter rows ground all steps up to `grounding_beta` = {options.beta:g}; the base row has no "
        "layout.",
        "- **Boxes**: objects are found by colour and shape with opencv (`gligen_ext.shapes_world.metrics`); a box "
        "succeeds at IoU ≥ 0.5 with the right colour and shape (COCO-MIG instance success); mIoU is the best "
        "same-colour IoU; image success means every shape box of the image succeeds. A stick figure counts among "
        "a layout's objects but is scored by PCK, not as a box.",
        f"- **Keypoints**: PCK, the share of requested visible joints with a figure stroke within r = {radius:g} px "
        f"({radius / size:.1%} of the {size}-pixel side).",
        "- **Depth**: IoU of the image's object silhouettes (non-background pixels) with the depth map's.",
        "- **Caption fidelity**: every (colour, shape) the caption names is detected (and a figure, if named).",
        f"- **{fid_label(result)}**: {record['fid_description']}; {options.layouts} generated images against "
        f"{options.reference_images} real held-out images (seeds {record['reference_seeds'][0]}–"
        f"{record['reference_seeds'][1]}). With this few images the estimate is biased upwards: compare rows.",
    ]


def markdown_report(result: BenchmarkResult, *, picture: str | None = None) -> str:
    """The results page; ``picture`` is the picture's path relative to the page."""
    sweep = result.provenance.get("sweep_adapter")
    lines = [
        "# Grounding benchmark: shapes world",
        "",
        "<!-- Generated by the grounding benchmark; do not edit by hand: rerun the command below. -->",
        "",
        *_how_made(result),
        "",
        "## Every setting",
        "",
        summary_table(result),
        "",
        "## Box success by number of objects",
        "",
        *_by_objects_table(result),
    ]
    if sweep is not None:
        lines += ["", f"## Effect of `grounding_beta` (adapter `{sweep}`)", "", *_sweep_table(result),
                  "", "At β = 0 no step is grounded: the row must equal the base's."]  # fmt: skip
    if picture is not None:
        columns = ", ".join(["the layout", "the real scene", *(row.name for row in _picture_rows(result))])
        lines += ["", "## Examples", "", f"![examples]({picture})", "", f"Columns: {columns}; one layout per row."]
    return "\n".join(lines) + "\n"


def _picture_rows(result: BenchmarkResult) -> list[SettingResult]:
    # the base and each adapter at the main beta; the sweep stays in its table
    return [row for row in result.settings if row.adapter is None or row.beta == result.options.beta]


def benchmark_picture(result: BenchmarkResult, *, cell: int = CELL) -> Image.Image:
    """A grid, one example layout per row: the layout drawn, the real scene with the layout over it, then the
    image of the base and of each adapter."""
    rows = _picture_rows(result)
    count = min(len(result.scenes), *(len(row.examples) for row in rows))
    if count == 0:
        raise ValueError("benchmark_picture: the result holds no example images; run with examples >= 1")
    cells, labels = [], []
    for i in range(count):
        scene = result.scenes[i]
        layout = full_layout(scene)
        real = Image.fromarray(scene.image).resize((cell, cell), Image.Resampling.NEAREST)
        cells += [draw_layout(layout, width=cell, height=cell), overlay_layout(real, layout, show_maps=False)]
        cells += [Image.fromarray(row.examples[i]).resize((cell, cell), Image.Resampling.NEAREST) for row in rows]
        labels += ["layout", "real", *(row.name for row in rows)]
    return image_grid(cells, cols=2 + len(rows), labels=labels)


def write_report(
    result: BenchmarkResult,
    *,
    json_path: str | os.PathLike | None = None,
    markdown_path: str | os.PathLike | None = None,
    picture_path: str | os.PathLike | None = None,
) -> list[Path]:
    """Write whichever outputs are given (folders are created); returns their paths."""
    written = []
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    if picture_path is not None:
        path = Path(picture_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        benchmark_picture(result).save(path)
        written.append(path)
    if markdown_path is not None:
        path = Path(markdown_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = None
        if picture_path is not None:  # linked relative to the page, so the pair can move together
            picture = Path(os.path.relpath(Path(picture_path).resolve(), path.parent.resolve())).as_posix()
        path.write_text(markdown_report(result, picture=picture), encoding="utf-8")
        written.append(path)
    return written
