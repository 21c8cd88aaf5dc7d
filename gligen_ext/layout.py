"""Parse and validate user layout dicts (boxes, image boxes, COCO keypoints, dense maps) into :class:`Layout`.

Every problem raises :class:`LayoutError` whose message starts with the offending field's path, e.g.
``layout.boxes[2].box``, so the bad entry can be found in a long JSON file, and then says how to fix it.

A modality may add its own top-level key: its tokenizer class sets ``layout_key`` and validates the value in
``parse_layout_field``; :func:`register_layout_field` (called by ``register_tokenizer``) makes this module accept it
and the parsed value lands in :attr:`Layout.extras`.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import numbers
import os
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .layout_fields import (
    FieldContext,
    LayoutError,
    as_list,
    check_keys,
    parse_box,
    read_image,
    real_numbers,
    unit_coord,
)

logger = logging.getLogger(__name__)

MAP_CHANNELS: dict[str, int] = {"depth": 1, "hed": 1, "canny": 1, "normal": 3, "semantic": 1}
_PARTS = ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")
COCO_KEYPOINTS: tuple[str, ...] = ("nose", *(f"{side}_{part}" for part in _PARTS for side in ("left", "right")))
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = tuple((i, i + 1) for i in range(1, 17, 2))
# COCO's person skeleton is 1-based in the annotation files; these are the same 19 limbs, 0-based.
COCO_SKELETON: tuple[tuple[int, int], ...] = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12),
                                              (5, 6), (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3),
                                              (2, 4), (3, 5), (4, 6))
_UNITS = ("normalized", "pixels")
_TOP_KEYS = ("boxes", "keypoints", "units", *MAP_CHANNELS)
_TOL = 1e-6
# top-level key -> the tokenizer class that reads it and validates it (``parse_layout_field``)
_EXTRA_FIELDS: dict[str, Any] = {}


def register_layout_field(key: str, owner: Any) -> None:
    """Make :func:`parse_layout` accept the top-level ``key``, parsed by ``owner.parse_layout_field(value, context)``
    into ``Layout.extras[key]`` and reported by :meth:`Layout.modalities` as ``owner.modality``."""
    if key in _TOP_KEYS or (key in _EXTRA_FIELDS and _EXTRA_FIELDS[key] is not owner):
        raise ValueError(f"layout key {key!r} is already taken; give {owner.__name__} another layout_key")
    _EXTRA_FIELDS[key] = owner


def layout_field_owner(key: str) -> Any:
    """The class registered for the extra layout ``key``, or None."""
    return _EXTRA_FIELDS.get(key)


@dataclass(frozen=True)
class GroundedBox:
    """A box grounded by a text ``phrase`` or an RGB reference ``image``; ``box`` is normalised xyxy in [0, 1]."""

    box: tuple[float, float, float, float]
    phrase: str | None = None
    image: Image.Image | None = None

    @property
    def area(self) -> float:
        """Box area as a fraction of the image."""
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


@dataclass(frozen=True, eq=False)  # field-wise == on an ndarray is ambiguous, so compare by identity
class PersonKeypoints:
    """One person: ``points`` is a read-only (17, 3) float32 array of x, y in [0, 1] and v in {0, 1, 2}."""

    points: np.ndarray

    @property
    def area(self) -> float:
        """Area of the bounding box of the labelled (v > 0) points; 0.0 with fewer than 2 of them."""
        xy = self.points[self.points[:, 2] > 0, :2]
        return float(np.prod(np.ptp(xy, axis=0))) if len(xy) >= 2 else 0.0


@dataclass
class Layout:
    """A validated layout for one prompt; ``maps`` holds float32 (C, H, W) tensors, C = ``MAP_CHANNELS[name]``,
    in [0, 1], except that ``"semantic"`` holds unscaled integer class ids."""

    boxes: list[GroundedBox] = field(default_factory=list)
    keypoints: list[PersonKeypoints] = field(default_factory=list)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    # fields that modalities add, by layout key, as their tokenizer's parse_layout_field returned them
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def phrase_boxes(self) -> list[GroundedBox]:
        """The boxes grounded by text."""
        return [b for b in self.boxes if b.phrase is not None]

    @property
    def image_boxes(self) -> list[GroundedBox]:
        """The boxes grounded by a reference image."""
        return [b for b in self.boxes if b.image is not None]

    def modalities(self) -> set[str]:
        """Inputs present: ``"boxes"`` (phrase boxes), ``"image_boxes"``, ``"keypoints"``, the map names and the
        modalities owning the extra fields."""
        present = {"boxes": self.phrase_boxes, "image_boxes": self.image_boxes, "keypoints": self.keypoints}
        extras = {_EXTRA_FIELDS[key].modality if key in _EXTRA_FIELDS else key for key in self.extras}
        return set(self.maps) | extras | {name for name, items in present.items() if items}

    def is_empty(self) -> bool:
        """True when nothing grounds the prompt."""
        return not (self.boxes or self.keypoints or self.maps or self.extras)


LayoutLike = Layout | Mapping[str, Any] | str | os.PathLike | None


def _parse_box_entry(entry: Any, path: str, size: tuple[float, float], pixels: bool, base: Path | None) -> GroundedBox:
    if not isinstance(entry, Mapping):
        raise LayoutError(f"{path}: expected a dict {{'phrase' or 'image', 'box'}}, got {type(entry).__name__}")
    check_keys(entry, ("box", "phrase", "image"), path)
    phrase, image = entry.get("phrase"), entry.get("image")
    if phrase is not None and image is not None:
        raise LayoutError(f"{path}: give either 'phrase' or 'image', not both; use two boxes for both")
    if phrase is None and image is None:
        raise LayoutError(f"{path}: needs a 'phrase' (text) or an 'image' (reference picture) to ground the box")
    if entry.get("box") is None:
        raise LayoutError(f"{path}: missing 'box'; add \"box\": [x0, y0, x1, y1]")
    box = parse_box(entry["box"], f"{path}.box", size, pixels)
    if image is not None:
        image = read_image(image, f"{path}.image", base) if isinstance(image, (str, os.PathLike)) else image
        if not isinstance(image, Image.Image) or 0 in image.size:
            raise LayoutError(f"{path}.image: expected a non-empty PIL image or an image file path, got {image!r}")
        return GroundedBox(box, image=image.convert("RGB"))
    if not isinstance(phrase, str) or not phrase.strip():
        raise LayoutError(f"{path}.phrase: expected a non-empty string describing the box, got {phrase!r}")
    return GroundedBox(box, phrase=phrase.strip())


def _parse_person(entry: Any, path: str, size: tuple[float, float], pixels: bool) -> PersonKeypoints:
    if not isinstance(entry, Mapping) or entry.get("points") is None:
        raise LayoutError(f'{path}: expected a dict {{"points": [[x, y, v], ...]}} with 17 COCO keypoints')
    check_keys(entry, ("points",), path)
    points = as_list(entry["points"], f"{path}.points", "keypoints in COCO order", len(COCO_KEYPOINTS))
    out = np.zeros((len(COCO_KEYPOINTS), 3), np.float32)
    for i, point in enumerate(points):
        x, y, v = real_numbers(point, 3, f"{path}.points[{i}]", "[x, y, v]")
        if v not in (0, 1, 2):
            raise LayoutError(f"{path}.points[{i}]: v must be 0 (absent), 1 (occluded) or 2 (visible), got {v:g}")
        if v > 0:  # COCO stores absent points as (0, 0); their coordinates mean nothing, so they stay 0
            xy = (unit_coord(c, s, f"{path}.points[{i}]", n, pixels) for c, s, n in zip((x, y), size, "xy"))
            out[i] = (*xy, v)
    out.setflags(write=False)
    return PersonKeypoints(out)


def _parse_map(value: Any, name: str, path: str, base_dir: Path | None) -> torch.Tensor:
    """Turn a map value into float32 (C, H, W): intensities scaled to [0, 1], semantic class ids kept as they are."""
    if isinstance(value, (str, os.PathLike)):
        value = read_image(value, path, base_dir)
    if isinstance(value, Image.Image):
        mode = value.mode
        if mode in ("1", "L", "I", "F", "RGB") or mode.startswith("I;16") or (mode == "P" and name == "semantic"):
            arr = np.array(value)  # palette indices of a semantic "P" image are the class ids
        else:  # alpha, palettes and other colour spaces
            arr = np.array(value.convert("L" if mode in ("LA", "La") else "RGB"))
        # Some Pillow versions open 16-bit PNGs as 32-bit "I"; restore uint16 so they scale by 65535.
        value = arr.astype(np.uint16) if mode == "I" and arr.size and 0 <= arr.min() <= arr.max() <= 65535 else arr
    channels_first = isinstance(value, torch.Tensor)
    if channels_first:  # numpy has no bfloat16
        value = value.detach().to("cpu", torch.float32 if value.dtype == torch.bfloat16 else None).numpy()
    if not isinstance(value, np.ndarray):
        raise LayoutError(f"{path}: expected a PIL image, ndarray, tensor or image path, got {type(value).__name__}")
    if value.dtype.kind not in "biuf":
        raise LayoutError(f"{path}: dtype {value.dtype} is not numeric; give a bool, integer or float array")
    if value.size == 0:
        raise LayoutError(f"{path}: the map has no pixels (shape {tuple(value.shape)})")
    layouts = "(H, W) or (C, H, W) for torch tensors" if channels_first else "(H, W) or (H, W, C) for arrays/images"
    if value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[0 if channels_first else 2] not in (1, 3)):
        raise LayoutError(f"{path}: got {value.ndim} dims, shape {tuple(value.shape)}; expected {layouts}, C 1 or 3")
    arr = value[None] if value.ndim == 2 else value if channels_first else value.transpose(2, 0, 1)
    lo, hi = float(arr.min()), float(arr.max())
    span = f"values span [{lo:.4g}, {hi:.4g}]"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise LayoutError(f"{path}: the map contains NaN or inf; replace them with finite values")
    if name == "semantic":
        if lo < 0 or (arr.dtype.kind == "f" and not np.array_equal(arr, np.rint(arr))):
            raise LayoutError(f"{path}: semantic maps hold integer class ids >= 0, but {span}; give integer ids")
        if arr.shape[0] != 1 and not (arr == arr[:1]).all():
            raise LayoutError(f"{path}: semantic maps need one class id per pixel, got 3 differing channels; "
                              "convert a colour-coded map to integer ids")
    elif arr.dtype.kind in "iu":
        if lo < 0:
            raise LayoutError(f"{path}: {span}; negative integers are not intensities, give values >= 0")
        # wider integer types usually hold 8- or 16-bit values (e.g. np.array of a list gives int64)
        depth = 255 if arr.dtype == np.uint8 or (arr.dtype != np.uint16 and hi <= 255) else 65535
        if hi > depth:
            raise LayoutError(f"{path}: {span}; integer maps must be 8- or 16-bit, or give floats in [0, 1]")
        arr = arr.astype(np.float32) / np.float32(depth)
    elif arr.dtype.kind == "f":
        if lo < -_TOL or hi > 1 + _TOL:
            raise LayoutError(f"{path}: {span}; scale them to [0, 1] (e.g. divide by the maximum)")
        arr = np.clip(arr, 0.0, 1.0)
    arr = arr.astype(np.float32)
    if arr.shape[0] != MAP_CHANNELS[name]:
        if MAP_CHANNELS[name] == 3:
            raise LayoutError(f"{path}: '{name}' maps need 3 channels (x, y, z), got {arr.shape[0]}")
        arr = arr.mean(axis=0, keepdims=True)  # single-channel maps are often stored as greyscale copied to RGB
    return torch.from_numpy(np.ascontiguousarray(arr))


def parse_layout(layout: LayoutLike, *, width: int | None = None, height: int | None = None,
                 field_path: str = "layout") -> Layout:
    """Validate one layout and return it normalised: boxes and keypoints in [0, 1], maps as (C, H, W) float32.

    ``None`` or ``{}`` gives an empty :class:`Layout`; a :class:`Layout` passes through unchanged; a str or path names
    a JSON file whose relative image/map paths resolve against its folder. ``width`` and ``height`` (pixels) are
    needed only for ``"units": "pixels"``. Raises :class:`LayoutError` on any bad input."""
    if isinstance(layout, Layout):
        return layout
    base_dir = None
    if isinstance(layout, (str, os.PathLike)):
        file = Path(layout).expanduser()
        if not file.is_file():
            raise LayoutError(f"{field_path}: file '{layout}' does not exist; give a layout dict or a JSON file path")
        try:
            layout, base_dir = json.loads(file.read_text(encoding="utf-8")), file.parent
        except (OSError, ValueError) as exc:
            raise LayoutError(f"{field_path}: cannot read '{file}' as JSON ({exc})") from exc
    if layout is None:
        return Layout()
    if not isinstance(layout, Mapping):
        raise LayoutError(f"{field_path}: expected a layout dict or a JSON file path, got {type(layout).__name__}")
    check_keys(layout, (*_TOP_KEYS, *_EXTRA_FIELDS), field_path)
    units = "normalized" if layout.get("units") is None else layout["units"]
    if not isinstance(units, str) or units not in _UNITS:
        close = difflib.get_close_matches(str(units), _UNITS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise LayoutError(f"{field_path}.units: expected 'normalized' or 'pixels', got {units!r}{hint}")
    pixels, size = units == "pixels", (1.0, 1.0)
    if pixels:
        if width is None or height is None:
            raise LayoutError(f"{field_path}.units: 'pixels' needs the image size; pass width= and height=")
        if not (isinstance(width, numbers.Real) and isinstance(height, numbers.Real) and width > 0 and height > 0):
            raise LayoutError(f"{field_path}.units: width and height must be positive, got {width!r} x {height!r}")
        size = (float(width), float(height))
    given = {k: v for k, v in layout.items() if v is not None}  # a None value means the key is absent
    out, path = Layout(), field_path
    for i, entry in enumerate(as_list(given.get("boxes", []), f"{path}.boxes", "boxes (wrap a single one in [])")):
        out.boxes.append(_parse_box_entry(entry, f"{path}.boxes[{i}]", size, pixels, base_dir))
    for i, entry in enumerate(as_list(given.get("keypoints", []), f"{path}.keypoints", "persons {'points': [...]}")):
        out.keypoints.append(_parse_person(entry, f"{path}.keypoints[{i}]", size, pixels))
    out.maps = {k: _parse_map(given[k], k, f"{path}.{k}", base_dir) for k in MAP_CHANNELS if k in given}
    context = FieldContext(path, size, pixels, base_dir)
    for key in [k for k in _EXTRA_FIELDS if k in given]:
        value = _EXTRA_FIELDS[key].parse_layout_field(given[key], replace(context, path=f"{path}.{key}"))
        if not (isinstance(value, Sized) and len(value) == 0):  # an empty field grounds nothing, like "boxes": []
            out.extras[key] = value
    return out


def parse_layouts(layouts: LayoutLike | Sequence[LayoutLike], *, batch_size: int | None = None,
                  width: int | None = None, height: int | None = None) -> list[Layout]:
    """Parse one layout per prompt: a list or tuple gives one per prompt (its length must equal ``batch_size``);
    anything else is a single layout shared by all ``batch_size`` prompts (the same :class:`Layout`, repeated)."""
    if not isinstance(layouts, (list, tuple)):
        return [parse_layout(layouts, width=width, height=height)] * (1 if batch_size is None else batch_size)
    if batch_size is not None and len(layouts) != batch_size:
        raise LayoutError(f"layouts: got {len(layouts)} layouts for {batch_size} prompts; pass one layout per "
                          "prompt, or a single layout (not in a list) to share it")
    return [parse_layout(x, width=width, height=height, field_path=f"layouts[{i}]") for i, x in enumerate(layouts)]


def _keep_largest(items: Sequence[Any], max_items: int, what: str) -> list[Any]:
    if len(items) <= max_items:
        return list(items)
    # The stable sort keeps the earlier item on ties; sorting the kept indices restores the input order.
    kept = sorted(sorted(range(len(items)), key=lambda i: -items[i].area)[: max(max_items, 0)])
    logger.warning("Dropped %d of %d %s: the model takes at most %d; kept the largest by area.",
                   len(items) - len(kept), len(items), what, max_items)
    return [items[i] for i in kept]


def keep_largest_boxes(boxes: Sequence[GroundedBox], max_boxes: int) -> list[GroundedBox]:
    """Keep the ``max_boxes`` largest boxes (as GLIGEN does) in their input order; warns when any are dropped."""
    return _keep_largest(boxes, max_boxes, "boxes")


def keep_largest_persons(persons: Sequence[PersonKeypoints], max_persons: int) -> list[PersonKeypoints]:
    """Keep the ``max_persons`` persons with the largest keypoint boxes, in input order; warns when any are dropped."""
    return _keep_largest(persons, max_persons, "persons")
