"""The training record format and the checks that turn a stored row into (image, caption, layout) or a bad row.

A record is one row of a Hugging Face ``datasets`` table with the columns of :data:`RECORD_FEATURES`:

- ``image``: the picture (``datasets.Image``);
- ``caption``: its text prompt;
- ``layout``: a JSON string of the core layout dict of :mod:`gligen_ext.layout` in ``"units": "normalized"``, boxes
  ``{"box": [x0, y0, x1, y1], "phrase": str}`` and persons ``{"points": [[x, y, v], ...]}`` (17 COCO keypoints),
  with no maps inside the JSON;
- optional map columns ``depth``, ``hed``, ``canny``, ``normal``, ``semantic`` (``datasets.Image`` or None), each the
  size of the image.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
from PIL import Image

from gligen_ext.layout import MAP_CHANNELS, LayoutError, parse_layout

MAP_COLUMNS: tuple[str, ...] = tuple(MAP_CHANNELS)
IMAGE_COLUMNS: tuple[str, ...] = ("image", *MAP_COLUMNS)
# the record format has no reference pictures for "image_boxes"; those are the layout-only modalities it serves
RECORD_MODALITIES: tuple[str, ...] = ("boxes", "keypoints", *MAP_COLUMNS)
BAD_ROW_REASONS: tuple[str, ...] = (
    "unreadable_image", "layout_outside_image", "empty_layout", "map_size", "bad_layout")


def record_features(maps: Sequence[str] = MAP_COLUMNS) -> datasets.Features:
    """Features of a record table holding the map columns ``maps`` (a subset of :data:`MAP_COLUMNS`)."""
    unknown = [m for m in maps if m not in MAP_COLUMNS]
    if unknown:
        raise ValueError(f"maps: unknown map column(s) {unknown}; choose from {list(MAP_COLUMNS)}")
    columns = {"image": datasets.Image(), "caption": datasets.Value("string"), "layout": datasets.Value("string")}
    return datasets.Features(columns | {name: datasets.Image() for name in maps})


RECORD_FEATURES: datasets.Features = record_features()


class BadRow(Exception):
    """A row that cannot train: ``reason`` is one of :data:`BAD_ROW_REASONS`; the message says what was wrong."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in BAD_ROW_REASONS:
            raise ValueError(f"reason: {reason!r} is not one of {BAD_ROW_REASONS}")
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # DataLoader workers pickle the bad rows they return; the default would call __init__ with one argument
        return BadRow, (self.reason, self.message)


class BadRowCounter:
    """Counts skipped rows by reason, so a run can report how much of its data it could not use."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = Counter()

    def add(self, reason: str) -> None:
        self.counts[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, e.g. ``"3 bad rows skipped: empty_layout 2, unreadable_image 1"``."""
        if not self.total:
            return "no bad rows"
        parts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{self.total} bad rows skipped: {parts}"


def layout_field_modalities() -> dict[str, str]:
    """Registered modalities that bring their own layout field (``layout_key``), e.g. ``{"points": "points"}``:
    records carry them in the layout JSON like boxes, so a new modality needs no edit here."""
    from gligen_ext.tokenizers import available_modalities, get_tokenizer_class

    keys = {m: get_tokenizer_class(m).layout_key for m in available_modalities()}
    return {modality: key for modality, key in keys.items() if key is not None}


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """Return ``modalities`` as a tuple after checking each is one the record format can serve."""
    if isinstance(modalities, str):
        modalities = (modalities,)
    served = [*RECORD_MODALITIES, *layout_field_modalities()]
    unknown = [m for m in modalities if m not in served]
    if unknown or not modalities:
        raise ValueError(f"modalities: {unknown or 'none given'} not served by training records; "
                         f"choose from {served}")
    return tuple(modalities)


def open_image(value: Any, *, column: str) -> Image.Image:
    """Open a stored image: a PIL image, ``{"bytes", "path"}`` (``datasets.Image(decode=False)``), bytes or a path.

    Pixels are loaded here, so a truncated file raises :class:`BadRow` now and not later in a worker."""
    try:
        if isinstance(value, Image.Image):
            value.load()
            return value
        if isinstance(value, Mapping):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            value = io.BytesIO(value)
        elif not isinstance(value, (str, os.PathLike)):
            kind = type(value).__name__
            raise BadRow("unreadable_image", f"{column}: expected image bytes or a file path, got {kind}")
        image = Image.open(value)
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadRow("unreadable_image", f"{column}: cannot decode the image ({exc})") from exc
    return image


def _map_array(image: Image.Image, name: str) -> np.ndarray:
    """A map image as the array :func:`gligen_ext.layout.parse_layout` reads: (H, W) or (H, W, 3) for normals."""
    if name == "normal":
        return np.asarray(image.convert("RGB"))
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit depth keeps its precision
        return np.asarray(image, dtype=np.uint16 if name != "semantic" else np.int32)
    if name == "semantic" and image.mode in ("L", "P"):  # palette indices are the class ids
        return np.asarray(image)
    return np.asarray(image.convert("L"))  # grey maps are often stored as RGB copies


def _check_inside(value: Any, size: float, path: str) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if not -1e-6 <= value / size <= 1 + 1e-6:
            unit = "pixels" if size != 1 else "the [0, 1] range"
            raise BadRow("layout_outside_image", f"{path} = {value:g} lies outside the image ({size:g} {unit})"
                         if size != 1 else f"{path} = {value:g} lies outside {unit}")


def _check_layout_inside(raw: Mapping[str, Any], width: int, height: int) -> None:
    """Coordinates outside the image are their own bad-row reason, told apart from other schema errors."""
    pixels = raw.get("units") == "pixels"
    size = (width, height) if pixels else (1, 1)
    for i, entry in enumerate(raw.get("boxes") or []):
        box = entry.get("box") if isinstance(entry, Mapping) else None
        if isinstance(box, (list, tuple)) and len(box) == 4:
            for j, value in enumerate(box):
                _check_inside(value, size[j % 2], f"layout.boxes[{i}].box[{j}]")
    for i, person in enumerate(raw.get("keypoints") or []):
        points = person.get("points") if isinstance(person, Mapping) else None
        for k, point in enumerate(points if isinstance(points, (list, tuple)) else []):
            if isinstance(point, (list, tuple)) and len(point) == 3 and point[2]:  # absent points mean nothing
                for j in range(2):
                    _check_inside(point[j], size[j], f"layout.keypoints[{i}].points[{k}][{j}]")


def decode_layout(record: Mapping[str, Any], *, image_size: tuple[int, int],
                  modalities: Sequence[str]) -> dict[str, Any]:
    """The layout of ``record`` for an image of ``image_size`` (W, H): normalised boxes and persons, and the maps of
    the requested modalities as (H, W) or (H, W, 3) arrays. Raises :class:`BadRow`."""
    modalities = check_modalities(modalities)
    width, height = image_size
    try:
        raw = json.loads(record.get("layout") or "{}")
    except (TypeError, ValueError) as exc:
        raise BadRow("bad_layout", f"layout: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BadRow("bad_layout", f"layout: expected a JSON object, got {type(raw).__name__}")
    maps_in_json = [k for k in MAP_COLUMNS if k in raw]
    if maps_in_json:
        raise BadRow("bad_layout", f"layout: maps {maps_in_json} belong in their own image columns, not the JSON")
    _check_layout_inside(raw, width, height)
    try:
        parsed = parse_layout(raw, width=width, height=height)
    except LayoutError as exc:
        raise BadRow("bad_layout", str(exc)) from exc
    layout: dict[str, Any] = {"units": "normalized"}
    if "boxes" in modalities and parsed.phrase_boxes:
        layout["boxes"] = [{"box": list(b.box), "phrase": b.phrase} for b in parsed.phrase_boxes]
    if "keypoints" in modalities:
        persons = [p.points for p in parsed.keypoints if (p.points[:, 2] > 0).any()]
        if persons:
            layout["keypoints"] = [{"points": p.tolist()} for p in persons]
    for modality, key in layout_field_modalities().items():
        if modality in modalities and parsed.extras.get(key):
            layout[key] = parsed.extras[key]
    for name in (m for m in modalities if m in MAP_COLUMNS):
        if record.get(name) is None:
            continue
        map_image = open_image(record[name], column=name)
        if map_image.size != (width, height):
            raise BadRow("map_size", f"{name}: map is {map_image.size[0]}x{map_image.size[1]} but the image is "
                         f"{width}x{height}; store maps at the image's size")
        layout[name] = _map_array(map_image, name)
    if len(layout) == 1:
        raise BadRow("empty_layout", f"no boxes, keypoints or maps for modalities {list(modalities)}")
    return layout


def decode_record(record: Mapping[str, Any], *, modalities: Sequence[str]) -> tuple[Image.Image, str, dict]:
    """Decode one record into ``(RGB image, caption, layout dict)`` in the core schema (normalised units; maps as
    (H, W) or (H, W, 3) arrays the image's size, only for the requested ``modalities``).

    Raises :class:`BadRow` for an unreadable image, a layout outside the image, an empty layout, a map of the wrong
    size or an invalid layout."""
    image = open_image(record.get("image"), column="image")
    layout = decode_layout(record, image_size=image.size, modalities=modalities)
    return image.convert("RGB"), str(record.get("caption") or ""), layout

