"""Grounding metrics for shapes-world images, measured with opencv from pixels alone.

Objects are found by colour (each palette colour is one mask, split into connected components) and classified by
the ideal shape (square, circle, upright triangle) that, fitted to their bounding box, overlaps them best. Then:

* boxes: per-object IoU with the requested box and success at IoU >= 0.5 with the right colour and shape, the
  instance success rate of COCO-MIG (Zhou et al. 2024, "MIGC");
* keypoints: PCK, the fraction of requested visible joints with a stroke of the figure within ``radius`` pixels;
* depth: IoU of the image's object silhouettes with the depth map's;
* captions: whether every (colour, shape) a caption names is present anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .scenes import BACKGROUND, COLOURS, FIGURE_COLOUR, SHAPES

COLOUR_TOLERANCE = 90  # L1 distance in RGB; generated colours are rarely exact
MIN_AREA = 0.004  # components smaller than this fraction of the image are noise
SUCCESS_IOU = 0.5  # COCO-MIG's threshold
_PHRASE = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")


@dataclass(frozen=True)
class Detection:
    """One connected blob of a palette colour; ``box`` is normalised xyxy."""

    colour: str
    shape: str
    box: tuple[float, float, float, float]
    fill: float


def colour_mask(image: np.ndarray, rgb: Sequence[int], *, tolerance: int = COLOUR_TOLERANCE) -> np.ndarray:
    """(H, W) bool: pixels of ``image`` (H, W, 3) uint8 within ``tolerance`` (L1) of ``rgb``."""
    return np.abs(image.astype(np.int32) - np.asarray(rgb, np.int32)).sum(-1) <= tolerance


def shape_templates(width: int, height: int) -> dict[str, np.ndarray]:
    """(height, width) bool masks of each ideal shape filling a box of that size, as the world draws them."""
    templates = {}
    for shape in SHAPES:
        canvas = np.zeros((height * 4, width * 4), np.uint8)
        if shape == "square":
            canvas[:] = 1
        elif shape == "circle":
            cv2.ellipse(canvas, (width * 2, height * 2), (width * 2, height * 2), 0, 0, 360, 1, -1)
        else:
            cv2.fillPoly(canvas, [np.array([[width * 2, 0], [width * 4, height * 4], [0, height * 4]], np.int32)], 1)
        templates[shape] = cv2.resize(canvas * 255, (width, height), interpolation=cv2.INTER_AREA) > 127
    return templates


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose ideal mask, fitted to the blob's bounding box, overlaps the blob (H, W) bool best (IoU)."""
    scores = {
        shape: (mask & template).sum() / max((mask | template).sum(), 1)
        for shape, template in shape_templates(mask.shape[1], mask.shape[0]).items()
    }
    return max(scores, key=scores.get)


def detect_objects(image: np.ndarray, *, min_area: float = MIN_AREA) -> list[Detection]:
    """Every palette-coloured blob in ``image`` (H, W, 3) uint8 RGB, largest first."""
    height, width = image.shape[:2]
    found = []
    for colour, rgb in COLOURS.items():
        mask = colour_mask(image, rgb).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for label in range(1, count):
            x, y, w, h, area = stats[label]
            if area < min_area * height * width:
                continue
            blob = labels[y : y + h, x : x + w] == label
            box = (x / width, y / height, (x + w) / width, (y + h) / height)
            found.append(Detection(colour, classify_shape(blob), box, float(area) / float(w * h)))
    return sorted(found, key=lambda d: -(d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def parse_phrase(phrase: str) -> tuple[str, str] | None:
    """("red", "circle") from "a red circle"; None for phrases outside the palette (e.g. "a person")."""
    match = _PHRASE.search(phrase)
    return (match.group(1), match.group(2)) if match else None


def box_scores(image: np.ndarray, layout: dict) -> list[dict]:
    """Per requested shape box: best IoU among same-colour blobs, and success (IoU >= 0.5, colour and shape)."""
    detections = detect_objects(image)
    scores = []
    for entry in layout.get("boxes", []):
        wanted = parse_phrase(entry.get("phrase") or "")
        if wanted is None:
            continue
        same_colour = [box_iou(d.box, entry["box"]) for d in detections if d.colour == wanted[0]]
        exact = [box_iou(d.box, entry["box"]) for d in detections if (d.colour, d.shape) == wanted]
        success = max(exact, default=0.0) >= SUCCESS_IOU
        scores.append({"phrase": entry["phrase"], "iou": max(same_colour, default=0.0), "success": success})
    return scores


def keypoint_pck(image: np.ndarray, layout: dict, *, radius: float = 3.0) -> tuple[int, int]:
    """(hits, total): requested visible joints with a figure stroke within ``radius`` pixels of them."""
    strokes = colour_mask(image, FIGURE_COLOUR, tolerance=120)
    height, width = strokes.shape
    # distance from every pixel to the nearest stroke pixel
    distance = cv2.distanceTransform((~strokes).astype(np.uint8), cv2.DIST_L2, 3)
    hits = total = 0
    for person in layout.get("keypoints", []):
        for x, y, v in person["points"]:
            if v != 2:
                continue
            total += 1
            col, row = min(int(x * width), width - 1), min(int(y * height), height - 1)
            hits += bool(strokes.any() and distance[row, col] <= radius)
    return hits, total


def silhouette(image: np.ndarray, *, tolerance: int = 60) -> np.ndarray:
    """(H, W) bool: pixels that are not background."""
    return ~colour_mask(image, BACKGROUND, tolerance=tolerance)


def depth_iou(image: np.ndarray, depth: np.ndarray, *, threshold: int = 20) -> float:
    """IoU between the image's object silhouettes and the depth map's (``depth`` (H, W) uint8, near = bright)."""
    if depth.shape != image.shape[:2]:
        depth = cv2.resize(depth, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    drawn, wanted = silhouette(image), depth > threshold
    union = (drawn | wanted).sum()
    return float((drawn & wanted).sum() / union) if union else 1.0


def caption_fidelity(image: np.ndarray, caption: str, *, min_area: float = MIN_AREA) -> bool:
    """True when every (colour, shape) the caption names is detected in the image, and a figure if it names one."""
    found = {(d.colour, d.shape) for d in detect_objects(image, min_area=min_area)}
    wanted = {(m.group(1), m.group(2)) for m in _PHRASE.finditer(caption)}
    figure_ok = "person" not in caption or colour_mask(image, FIGURE_COLOUR, tolerance=120).mean() >= min_area
    return wanted <= found and figure_ok
