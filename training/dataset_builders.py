"""Build a training record dataset (``save_to_disk`` folder) from COCO files, an image folder + JSONL, or an image
folder with depth maps beside the images; optionally estimate depth with a ``transformers`` model.

    python -m training.dataset_builders coco-instances --annotations instances.json --images val2017 \
        --captions captions.json --out records/coco
    python -m training.dataset_builders coco-keypoints --annotations person_keypoints.json --images val2017 --out kp
    python -m training.dataset_builders jsonl --jsonl layouts.jsonl --images pictures --out records/mine
    python -m training.dataset_builders depth-folder --images pictures --out records/depth [--depth-model NAME]

Every row is checked as training will read it (:func:`training.records.decode_record`); bad rows are left out and
counted. See ``training/DATA.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets

from .coco_records import coco_instance_rows, coco_keypoint_rows
from .depth_estimation import DepthEstimator
from .records import MAP_COLUMNS, RECORD_FEATURES, BadRow, BadRowCounter, decode_record, open_image

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAP_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def find_map(image_file: Path, name: str) -> Path | None:
    """The ``name`` map of ``image_file`` (``x.jpg``): ``x_<name>.<ext>`` beside it, else ``<name>/x.<ext>`` in a
    sub-folder beside it, for ``ext`` in :data:`MAP_SUFFIXES` (in that order); None if neither exists."""
    beside = [image_file.with_name(f"{image_file.stem}_{name}{suffix}") for suffix in MAP_SUFFIXES]
    below = [image_file.parent / name / f"{image_file.stem}{suffix}" for suffix in MAP_SUFFIXES]
    return next((path for path in beside + below if path.is_file()), None)


def folder_rows(images_dir: str | os.PathLike, *, maps: Sequence[str] = ("depth",)) -> Iterator[dict[str, Any]]:
    """Rows for the images directly in ``images_dir``, each with the ``maps`` found by :func:`find_map`; the caption
    is ``x.txt`` beside the image (empty without one) and an optional layout ``x.json`` in the core schema."""
    for image_file in sorted(Path(images_dir).iterdir()):
        is_map = any(image_file.stem.endswith(f"_{name}") for name in MAP_COLUMNS)
        if image_file.suffix.lower() not in IMAGE_SUFFIXES or is_map or not image_file.is_file():
            continue
        caption_file, layout_file = image_file.with_suffix(".txt"), image_file.with_suffix(".json")
        layout: Any = {}
        if layout_file.is_file():
            try:
                layout = json.loads(layout_file.read_text(encoding="utf-8"))
            except ValueError:
                layout = None  # reported as a bad layout when the row is built
        found = {name: path for name in maps if (path := find_map(image_file, name)) is not None}
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        yield {"image_file": image_file, "caption": caption, "layout": layout, "maps": found}


def jsonl_rows(jsonl_file: str | os.PathLike, images_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Rows from lines ``{"file_name", "caption", "layout"}``; ``file_name`` and map paths inside the layout are
    relative to ``images_dir``. A line that is not a JSON object gets ``layout`` None (a bad row)."""
    lines = open(jsonl_file, encoding="utf-8")  # opened now, so a missing file fails before any row is built
    return _jsonl_rows(lines, Path(images_dir))


def _jsonl_rows(lines: io.TextIOBase, images_dir: Path) -> Iterator[dict[str, Any]]:
    with lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                file_name = entry["file_name"]
            except (ValueError, KeyError, TypeError):
                yield {"image_file": images_dir / f"<line {number}>", "caption": "", "layout": None}
                continue
            layout = entry.get("layout") or {}
            if isinstance(layout, dict):
                layout = {k: (str(images_dir / v) if k in MAP_COLUMNS and isinstance(v, str) else v)
                          for k, v in layout.items()}
            yield {"image_file": images_dir / file_name, "caption": str(entry.get("caption") or ""), "layout": layout}


def _stored(path: Path, column: str) -> dict[str, Any]:
    try:
        return {"bytes": Path(path).read_bytes(), "path": Path(path).name}
    except OSError as exc:
        raise BadRow("unreadable_image", f"{column}: cannot read '{path}' ({exc})") from exc


def make_record(row: dict[str, Any], *, depth_estimator: DepthEstimator | None = None) -> dict[str, Any]:
    """A checked record from a row ``{"image_file", "caption", "layout" (dict; maps as file paths), "maps"}``;
    raises :class:`BadRow`. The stored layout is normalised and holds only boxes and keypoints."""
    layout = row.get("layout")
    if not isinstance(layout, dict):
        raise BadRow("bad_layout", f"{row['image_file']}: the layout is not a JSON object")
    layout, maps = dict(layout), dict(row.get("maps") or {})
    for name in MAP_COLUMNS:
        value = layout.pop(name, None)
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise BadRow("bad_layout", f"layout.{name}: give maps as image file paths when building records")
        if value is not None:
            maps[name] = Path(value)
    record = {"image": _stored(row["image_file"], "image"), "caption": row.get("caption") or "",
              "layout": json.dumps(layout)} | {name: None for name in MAP_COLUMNS}
    record |= {name: _stored(path, name) for name, path in maps.items()}
    if depth_estimator is not None and record["depth"] is None:
        buffer = io.BytesIO()
        depth_estimator(open_image(record["image"], column="image")).save(buffer, format="PNG")
        record["depth"] = {"bytes": buffer.getvalue(), "path": None}
    present = [key for key in ("boxes", "keypoints") if layout.get(key)]
    present += [name for name in MAP_COLUMNS if record[name] is not None]
    if not present:
        raise BadRow("empty_layout", f"{row['image_file']}: no boxes, keypoints or maps")
    _, _, decoded = decode_record(record, modalities=present)
    record["layout"] = json.dumps({key: value for key, value in decoded.items() if key not in MAP_COLUMNS})
    return record


def build_records(rows: Iterable[dict[str, Any]], *, out: str | os.PathLike,
                  depth_estimator: DepthEstimator | None = None,
                  limit: int | None = None) -> tuple[datasets.Dataset, BadRowCounter]:
    """Check ``rows`` (see :func:`make_record`), write the good ones to ``out`` with ``save_to_disk`` (map columns
    only for maps some row has) and return the saved dataset and the count of bad rows left out."""
    out, counter, used_maps, written = Path(out), BadRowCounter(), set(), 0

    def generate() -> Iterator[dict[str, Any]]:
        nonlocal written
        for row in rows:
            if limit is not None and written >= limit:
                return
            try:
                record = make_record(row, depth_estimator=depth_estimator)
            except BadRow as bad:
                counter.add(bad.reason)
                logger.info("Left out %s: %s", row.get("image_file"), bad)
                continue
            used_maps.update(name for name in MAP_COLUMNS if record[name] is not None)
            written += 1
            yield record

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".building-") as cache:
        # a fresh fingerprint: the rows come from files on disk, which datasets' generator hashing cannot see
        records = datasets.Dataset.from_generator(generate, features=RECORD_FEATURES, cache_dir=cache,
                                                  fingerprint=uuid.uuid4().hex)
        records.remove_columns([name for name in MAP_COLUMNS if name not in used_maps]).save_to_disk(str(out))
    return datasets.load_from_disk(str(out)), counter


def _parser() -> argparse.ArgumentParser:
    summary = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="python -m training.dataset_builders", description=summary)
    commands = parser.add_subparsers(dest="command", required=True)
    coco = {"coco-instances": "COCO instances (boxes) + captions", "coco-keypoints": "COCO person keypoints"}
    for name, help_text in coco.items():
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--annotations", required=True, help="COCO instances or person_keypoints JSON")
        sub.add_argument("--images", required=True, help="folder holding the images' file_name")
        sub.add_argument("--captions", help="COCO captions JSON (captions_*.json)")
        sub.add_argument("--caption-seed", type=int, help="draw one caption per image with this seed (default: first)")
    commands.choices["coco-instances"].add_argument("--keep-crowd", action="store_true", help="keep iscrowd boxes")
    commands.choices["coco-keypoints"].add_argument("--with-boxes", action="store_true", help="add person boxes")
    commands.add_parser("jsonl", help="image folder + JSONL of {file_name, caption, layout}").add_argument(
        "--jsonl", required=True, help="one JSON object per line")
    commands.choices["jsonl"].add_argument("--images", required=True, help="folder the file names are relative to")
    folder = commands.add_parser("depth-folder", help="image folder with x_depth.png or depth/x.png beside x.jpg")
    folder.add_argument("--images", required=True, help="folder of images, captions x.txt, optional layouts x.json")
    folder.add_argument("--maps", default="depth", help=f"comma-separated map names to look for, of {MAP_COLUMNS}")
    for sub in commands.choices.values():
        sub.add_argument("--out", required=True, help="output folder (save_to_disk)")
        sub.add_argument("--depth-model", help="transformers depth-estimation model for images without a depth map")
        sub.add_argument("--invert-depth", action="store_true", help="the model predicts distance (metric depth)")
        sub.add_argument("--limit", type=int, help="stop after this many good records")
    return parser


def _rows(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    if args.command == "coco-instances":
        return coco_instance_rows(args.annotations, args.images, captions_file=args.captions,
                                  caption_seed=args.caption_seed, keep_crowd=args.keep_crowd)
    if args.command == "coco-keypoints":
        return coco_keypoint_rows(args.annotations, args.images, captions_file=args.captions,
                                  caption_seed=args.caption_seed, with_boxes=args.with_boxes)
    if args.command == "jsonl":
        return jsonl_rows(args.jsonl, args.images)
    maps = [name.strip() for name in args.maps.split(",") if name.strip()]
    unknown = [name for name in maps if name not in MAP_COLUMNS]
    if unknown:
        raise ValueError(f"--maps: unknown map name(s) {unknown}; choose from {list(MAP_COLUMNS)}")
    return folder_rows(args.images, maps=maps)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rows = _rows(args)
        estimator = DepthEstimator(args.depth_model, invert=args.invert_depth) if args.depth_model else None
        records, counter = build_records(rows, out=args.out, depth_estimator=estimator, limit=args.limit)
    except (ValueError, OSError, datasets.exceptions.DatasetGenerationError) as exc:
        print(f"error: {exc}")
        return 2
    print(f"wrote {len(records)} records to {args.out} (columns: {', '.join(records.column_names)}); "
          f"{counter.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
