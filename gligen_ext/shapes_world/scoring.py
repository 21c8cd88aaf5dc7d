"""Aggregate the per-image grounding metrics of :mod:`.metrics` over a set of layouts.

Objects per layout count every item, a stick figure included; only shape boxes are scored for boxes (a figure is
scored by keypoint PCK). Instance success and mean IoU are pooled over all scored boxes, as COCO-MIG reports them per
instance-count level (Zhou et al. 2024, https://arxiv.org/abs/2402.05408); image success is the share of images
whose every scored box succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .metrics import box_scores, caption_fidelity, depth_iou, keypoint_pck
from .scenes import Scene

OBJECT_COUNTS = (1, 2, 3, 4)


@dataclass
class CountScores:
    """Box grounding on the layouts with one number of objects."""

    layouts: int
    boxes: int
    miou: float | None
    success: float | None
    image_success: float | None


def pooled_success(by_objects: dict[int, CountScores], counts: tuple[int, ...] = (1, 2, 3)) -> float | None:
    """Box success over every box of the layouts with one of ``counts`` objects (the issue's 1–3-object target)."""
    rows = [by_objects[n] for n in counts if n in by_objects and by_objects[n].success is not None]
    boxes = sum(row.boxes for row in rows)
    return sum(row.success * row.boxes for row in rows) / boxes if boxes else None


@dataclass
class SettingScores:
    """Every metric of one setting; None where no layout asked for it (e.g. PCK without stick figures)."""

    box_miou: float | None
    box_success: float | None
    image_success: float | None
    pck: float | None
    pck_joints: int
    depth_iou: float
    caption_fidelity: float
    by_objects: dict[int, CountScores] = field(default_factory=dict)
    fid: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _box_summary(per_image: Sequence[list[dict]]) -> CountScores:
    """Pool the :func:`.metrics.box_scores` of several images."""
    boxes = [box for image in per_image for box in image]
    images = [all(box["success"] for box in image) for image in per_image if image]
    return CountScores(
        layouts=len(per_image),
        boxes=len(boxes),
        miou=_mean([box["iou"] for box in boxes]),
        success=_mean([box["success"] for box in boxes]),
        image_success=_mean(images),
    )


def score_images(
    images: Sequence[np.ndarray], scenes: Sequence[Scene], *, pck_radius: float = 3.0
) -> SettingScores:
    """Score ``images`` ((H, W, 3) uint8 each), generated for ``scenes`` (same order), against their layouts.

    ``pck_radius`` is in pixels of the images. Depth IoU and caption fidelity are means over all layouts.
    """
    if not scenes or len(images) != len(scenes):
        raise ValueError(f"score_images: {len(images)} images for {len(scenes)} scenes; give one image per scene")
    pairs, layouts = list(zip(images, scenes)), [scene.layout() for scene in scenes]
    per_image = [box_scores(image, layout) for image, layout in zip(images, layouts)]
    overall = _box_summary(per_image)
    hits, joints = np.sum(
        [keypoint_pck(image, layout, radius=pck_radius) for image, layout in zip(images, layouts)], axis=0
    ).tolist()
    by_objects = {
        count: _box_summary([scores for scores, scene in zip(per_image, scenes) if len(scene.items) == count])
        for count in OBJECT_COUNTS
    }
    return SettingScores(
        box_miou=overall.miou,
        box_success=overall.success,
        image_success=overall.image_success,
        pck=hits / joints if joints else None,
        pck_joints=int(joints),
        depth_iou=float(np.mean([depth_iou(image, scene.depth) for image, scene in pairs])),
        caption_fidelity=float(np.mean([caption_fidelity(image, scene.caption) for image, scene in pairs])),
        by_objects=by_objects,
    )

