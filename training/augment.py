"""Square crop, resize and horizontal flip of an image together with its layout (boxes, keypoints, maps).

GLIGEN's recipe (gligen.md Sec. 5): crop to a square, resize, flip with p = 0.5, recompute the boxes after crop and
flip, drop boxes under 1 % of the image and keep the 30 largest (8 persons for keypoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from gligen_ext.layout import COCO_FLIP_PAIRS, MAP_CHANNELS, layout_field_owner

# a left/right swap of COCO joints: index i of the flipped person reads joint _FLIP_ORDER[i] of the original
_FLIP_ORDER = np.arange(17)
for _left, _right in COCO_FLIP_PAIRS:
    _FLIP_ORDER[[_left, _right]] = _right, _left


@dataclass(frozen=True)
class CropFlip:
    """A square crop ``[left, left + side) x [top, top + side)`` in pixels of the source image, then a mirror."""

    left: int
    top: int
    side: int
    flip: bool


def plan_crop_flip(width: int, height: int, *, rng: np.random.Generator, random_crop: bool = True,
                   flip_prob: float = 0.5) -> CropFlip:
    """Choose the square crop (random, or centred) and the flip for an image of ``width`` x ``height`` pixels."""
    side = min(width, height)
    # both numbers are always drawn, so a row's flip does not depend on whether its crop is random
    offset, flip_draw = rng.random(), rng.random()
    fraction = offset if random_crop else 0.5
    left, top = int(fraction * (width - side) + 0.5), int(fraction * (height - side) + 0.5)
    return CropFlip(min(left, width - side), min(top, height - side), side, bool(flip_draw < flip_prob))


def _largest(areas: list[float], limit: int) -> list[int]:
    """Indices of the ``limit`` largest areas, in input order (ties keep the earlier item)."""
    order = sorted(range(len(areas)), key=lambda i: -areas[i])
    return sorted(order[: max(limit, 0)])


def _crop_boxes(boxes: list[dict], plan: CropFlip, size: tuple[int, int], min_box_area: float,
                max_boxes: int) -> list[dict]:
    width, height = size
    kept, areas = [], []
    for entry in boxes:
        x0, y0, x1, y1 = np.asarray(entry["box"], np.float64) * (width, height, width, height)
        x0, x1 = np.clip(np.array([x0, x1]) - plan.left, 0, plan.side) / plan.side
        y0, y1 = np.clip(np.array([y0, y1]) - plan.top, 0, plan.side) / plan.side
        area = (x1 - x0) * (y1 - y0)
        if area < min_box_area or area <= 0:  # also drops boxes the crop cut away entirely
            continue
        if plan.flip:
            x0, x1 = 1.0 - x1, 1.0 - x0
        kept.append(entry | {"box": [float(x0), float(y0), float(x1), float(y1)]})
        areas.append(float(area))
    return [kept[i] for i in _largest(areas, max_boxes)]


def _crop_persons(persons: list[dict], plan: CropFlip, size: tuple[int, int], max_persons: int) -> list[dict]:
    width, height = size
    kept, areas = [], []
    for person in persons:
        points = np.array(person["points"], np.float64).reshape(-1, 3)
        xy = (points[:, :2] * (width, height) - (plan.left, plan.top)) / plan.side
        inside = (points[:, 2] > 0) & (xy >= 0).all(axis=1) & (xy <= 1).all(axis=1)
        points = np.where(inside[:, None], np.concatenate([xy, points[:, 2:]], axis=1), 0.0)
        if not inside.any():
            continue
        if plan.flip:
            points[inside, 0] = 1.0 - points[inside, 0]
            # GLIGEN's official data mirrors x but keeps the joint names, so a left wrist would end up on the
            # right side while still labelled "left"; swapping the pairs keeps every name true to the picture.
            points = points[_FLIP_ORDER]
        labelled = points[points[:, 2] > 0, :2]
        kept.append(person | {"points": points.tolist()})
        areas.append(float(np.prod(np.ptp(labelled, axis=0))) if len(labelled) >= 2 else 0.0)
    return [kept[i] for i in _largest(areas, max_persons)]


def _crop_map(values: np.ndarray, name: str, plan: CropFlip, resolution: int) -> np.ndarray:
    values = values[plan.top : plan.top + plan.side, plan.left : plan.left + plan.side]
    if plan.flip:
        values = values[:, ::-1].copy()
        if name == "normal":  # a mirrored surface faces the other way along x; GLIGEN leaves this channel as is
            values[..., 0] = (255 if values.dtype == np.uint8 else 1.0) - values[..., 0]
    if name == "semantic":  # class ids must not be blended
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if resolution < plan.side else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(values), (resolution, resolution), interpolation=interpolation)


def transform_layout(layout: dict[str, Any], plan: CropFlip, *, image_size: tuple[int, int], resolution: int,
                     min_box_area: float = 0.01, max_boxes: int = 30, max_persons: int = 8) -> dict[str, Any]:
    """Apply ``plan`` to a normalised layout of an image of ``image_size`` (W, H); maps become
    ``resolution`` x ``resolution``. Boxes under ``min_box_area`` of the crop are dropped, then the largest
    ``max_boxes`` boxes and ``max_persons`` persons are kept."""
    out: dict[str, Any] = {"units": "normalized"}
    if layout.get("boxes"):
        out["boxes"] = _crop_boxes(layout["boxes"], plan, image_size, min_box_area, max_boxes)
    if layout.get("keypoints"):
        out["keypoints"] = _crop_persons(layout["keypoints"], plan, image_size, max_persons)
    for name in MAP_CHANNELS:
        if layout.get(name) is not None:
            out[name] = _crop_map(np.asarray(layout[name]), name, plan, resolution)
    width, height = image_size
    window = (plan.left / width, plan.top / height, (plan.left + plan.side) / width, (plan.top + plan.side) / height)
    for key, value in layout.items():
        owner = layout_field_owner(key)
        if owner is not None and value:  # a modality's own layout field moves through its own transform
            out[key] = owner.transform_layout_field(value, crop=window, flip=plan.flip)
    return out


def transform_image(image: Image.Image, plan: CropFlip, *, resolution: int) -> Image.Image:
    """Apply ``plan`` to ``image`` and resize it to ``resolution`` x ``resolution`` (bicubic)."""
    box = (plan.left, plan.top, plan.left + plan.side, plan.top + plan.side)
    image = image.resize((resolution, resolution), Image.Resampling.BICUBIC, box=box)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if plan.flip else image


def augment(image: Image.Image, layout: dict[str, Any], *, resolution: int, rng: np.random.Generator,
            random_crop: bool = True, flip_prob: float = 0.5, min_box_area: float = 0.01, max_boxes: int = 30,
            max_persons: int = 8) -> tuple[Image.Image, dict[str, Any]]:
    """Crop ``image`` (random or centre) to a square, resize it to ``resolution``, flip it with ``flip_prob``, and
    move ``layout`` (normalised boxes, keypoints, (H, W[, 3]) maps the image's size) with it.

    Flips swap left/right keypoint names. Returns the new image and layout (normalised, maps ``resolution``²)."""
    plan = plan_crop_flip(*image.size, rng=rng, random_crop=random_crop, flip_prob=flip_prob)
    new_layout = transform_layout(layout, plan, image_size=image.size, resolution=resolution,
                                  min_box_area=min_box_area, max_boxes=max_boxes, max_persons=max_persons)
    return transform_image(image, plan, resolution=resolution), new_layout
