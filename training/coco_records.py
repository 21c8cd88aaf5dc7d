"""Rows of the training record format from COCO-style annotation files (instances, captions, person keypoints).

Coordinates are COCO pixels (boxes ``[x, y, w, h]``, keypoints ``[x, y, v] * 17``) and become normalised xyxy /
xyv. A box's phrase is its category name, or, where the annotation has MDETR-style ``tokens_positive`` character
spans into the image's ``caption``, those spans of the caption joined by spaces (as GLIGEN's grounding data).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gligen_ext.layout import COCO_KEYPOINTS

logger = logging.getLogger(__name__)


def read_json(path: str | os.PathLike, *, what: str) -> dict[str, Any]:
    """Read a COCO annotation file; a missing or malformed file names the option that gave it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: cannot read '{path}' as JSON ({exc})") from exc
    if not isinstance(data, dict) or ("images" not in data and "annotations" not in data):
        raise ValueError(f"{what}: '{path}' is not a COCO annotation file (no 'images' or 'annotations')")
    return data


def captions_by_image(captions_file: str | os.PathLike | None) -> dict[int, list[str]]:
    """``image_id -> captions`` from a COCO captions file (empty without one)."""
    if captions_file is None:
        return {}
    found: dict[int, list[str]] = defaultdict(list)
    for annotation in read_json(captions_file, what="captions").get("annotations", []):
        found[annotation["image_id"]].append(str(annotation["caption"]).strip())
    return found


def choose_caption(captions: list[str], image_id: int, *, caption_seed: int | None) -> str | None:
    """The first caption, or with ``caption_seed`` one drawn per image (the same one on every build)."""
    if not captions:
        return None
    if caption_seed is None:
        return captions[0]
    return captions[int(np.random.default_rng([caption_seed, image_id]).integers(len(captions)))]


def _normalised_box(bbox: list[float], width: int, height: int) -> list[float] | None:
    """COCO ``[x, y, w, h]`` pixels to normalised ``[x0, y0, x1, y1]``, clipped to the image (COCO boxes overshoot
    by fractions of a pixel); None for a box of no area."""
    x, y, w, h = (float(v) for v in bbox)
    x0, x1 = np.clip([x, x + w], 0, width) / width
    y0, y1 = np.clip([y, y + h], 0, height) / height
    return [float(x0), float(y0), float(x1), float(y1)] if x1 > x0 and y1 > y0 else None


def _phrase(annotation: dict[str, Any], caption: str | None, category: str) -> str:
    spans = annotation.get("tokens_positive") or []
    if caption and spans:
        words = " ".join(caption[start:end] for start, end in spans).strip()
        if words:
            return words
    return annotation.get("phrase") or category


def _image_table(data: dict[str, Any]) -> list[dict[str, Any]]:
    images = sorted(data.get("images", []), key=lambda image: image["id"])
    if not images:
        raise ValueError("annotations: the file lists no 'images'; give an instances or keypoints file")
    return images


def coco_instance_rows(instances_file: str | os.PathLike, images_dir: str | os.PathLike, *,
                       captions_file: str | os.PathLike | None = None, caption_seed: int | None = None,
                       keep_crowd: bool = False) -> Iterator[dict[str, Any]]:
    """One row per image that has at least one box: ``{"image_file", "caption", "layout"}`` (layout as a dict).

    The caption comes from the image's own ``caption`` field (MDETR style), else from ``captions_file``; without
    either it is the image's category names joined by ", " (GLIGEN's pseudo-captions for detection data). Crowd
    regions are left out unless ``keep_crowd``."""
    data = read_json(instances_file, what="instances")  # read now, so a bad file fails before any row is built
    categories = {c["id"]: c["name"] for c in data.get("categories", [])}
    captions = captions_by_image(captions_file)
    annotations: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for annotation in data.get("annotations", []):
        if keep_crowd or not annotation.get("iscrowd"):
            annotations[annotation["image_id"]].append(annotation)
    return _instance_rows(_image_table(data), annotations, categories, captions, Path(images_dir), caption_seed)


def _instance_rows(images: list[dict[str, Any]], annotations: dict[int, list[dict[str, Any]]],
                   categories: dict[int, str], captions: dict[int, list[str]], images_dir: Path,
                   caption_seed: int | None) -> Iterator[dict[str, Any]]:
    for image in images:
        own = image.get("caption")
        caption = own or choose_caption(captions.get(image["id"], []), image["id"], caption_seed=caption_seed)
        boxes = []
        for annotation in annotations.get(image["id"], []):
            box = _normalised_box(annotation["bbox"], image["width"], image["height"])
            category = categories.get(annotation.get("category_id"), "object")
            if box is not None:
                boxes.append({"box": box, "phrase": _phrase(annotation, own, category)})
        if not boxes:
            logger.debug("Image %s has no boxes; left out.", image["file_name"])
            continue
        if caption is None:
            caption = ", ".join(dict.fromkeys(b["phrase"] for b in boxes))
        yield {"image_file": images_dir / image["file_name"], "caption": caption,
               "layout": {"units": "normalized", "boxes": boxes}}


def _normalised_points(keypoints: list[float], width: int, height: int) -> list[list[float]]:
    points = np.asarray(keypoints, np.float64).reshape(len(COCO_KEYPOINTS), 3)
    labelled = points[:, 2] > 0
    # COCO labels points on the last pixel row/column at x = width; keep them in [0, 1]
    xy = np.clip(points[:, :2] / (width, height), 0.0, 1.0)
    out = np.where(labelled[:, None], np.concatenate([xy, points[:, 2:]], axis=1), 0.0)
    return out.tolist()


def coco_keypoint_rows(keypoints_file: str | os.PathLike, images_dir: str | os.PathLike, *,
                       captions_file: str | os.PathLike | None = None, caption_seed: int | None = None,
                       with_boxes: bool = False) -> Iterator[dict[str, Any]]:
    """One row per image with at least one labelled person: 17 COCO joints per person, ``v`` kept (0 absent,
    1 occluded, 2 visible); with ``with_boxes`` each person's box too, phrase ``"person"``."""
    data = read_json(keypoints_file, what="keypoints")
    captions = captions_by_image(captions_file)
    persons: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for annotation in data.get("annotations", []):
        if annotation.get("num_keypoints", 1) > 0 and len(annotation.get("keypoints") or []) == 3 * 17:
            persons[annotation["image_id"]].append(annotation)
    return _keypoint_rows(_image_table(data), persons, captions, Path(images_dir), caption_seed, with_boxes)


def _keypoint_rows(images: list[dict[str, Any]], persons: dict[int, list[dict[str, Any]]],
                   captions: dict[int, list[str]], images_dir: Path, caption_seed: int | None,
                   with_boxes: bool) -> Iterator[dict[str, Any]]:
    for image in images:
        people = persons.get(image["id"], [])
        if not people:
            continue
        width, height = image["width"], image["height"]
        layout: dict[str, Any] = {"units": "normalized",
                                  "keypoints": [{"points": _normalised_points(p["keypoints"], width, height)}
                                                for p in people]}
        if with_boxes:
            boxes = [_normalised_box(p["bbox"], width, height) for p in people if p.get("bbox")]
            layout["boxes"] = [{"box": box, "phrase": "person"} for box in boxes if box is not None]
        caption = choose_caption(captions.get(image["id"], []), image["id"], caption_seed=caption_seed)
        yield {"image_file": images_dir / image["file_name"], "caption": caption or "", "layout": layout}
