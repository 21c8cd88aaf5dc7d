"""Grounding metrics for shapes-world images, measured with opencv from pixels alone.

Objects are found by colour (each palette colour is one mask, split into connected components) and classified by
how much of their bounding box they fill (square ~1, circle ~pi/4, triangle ~1/2). On top of that:

* boxes: per-object IoU with the requested box and success at IoU >= 0.5 with the right colour and shape, the
  instance success rate of COCO-MIG (Zhou et al. 2024, "MIGC");
* keypoints: PCK, the fraction of requested visible joints with a stroke of the figure within ``radius`` pixels;
* depth: IoU of the image's object silhouettes with the depth map's;
* captions: whether every (colour, shape) a caption names is present anywhere.
"""

from __future__ import annotations

import math
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


def classify_shape(fill: float) -> str:
    """Shape from the fraction of its bounding box a blob fills (square 1, circle 0.785, triangle 0.5)."""
    ideal = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}
    return min(ideal, key=lambda shape: abs(ideal[shape] - fill))


def detect_objects(image: np.ndarray, *, min_area: float = MIN_AREA) -> list[Detection]:
    """Every palette-coloured blob in ``image`` (H, W, 3) uint8 RGB, largest first."""
    height, width = image.shape[:2]
    found = []
    for colour, rgb in COLOURS.items():
        mask = colour_mask(image, rgb).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for x, y, w, h, area in stats[1:count]:
            if area < min_area * height * width:
                continue
            fill = float(area) / float(w * h)
            box = (x / width, y / height, (x + w) / width, (y + h) / height)
            found.append(Detection(colour, classify_shape(fill), box, fill))
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
        candidates = [d for d in detections if d.colour == wanted[0]]
        best = max(candidates, key=lambda d: box_iou(d.box, entry["box"]), default=None)
        iou = box_iou(best.box, entry["box"]) if best else 0.0
        success = best is not None and iou >= SUCCESS_IOU and best.shape == wanted[1]
        scores.append({"phrase": entry["phrase"], "iou": iou, "success": bool(success)})
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


def caption_fidelity(image: np.ndarray, caption: str) -> bool:
    """True when every (colour, shape) the caption names is detected somewhere in the image."""
    found = {(d.colour, d.shape) for d in detect_objects(image)}
    wanted = {(m.group(1), m.group(2)) for m in _PHRASE.finditer(caption)}
    return wanted <= found
