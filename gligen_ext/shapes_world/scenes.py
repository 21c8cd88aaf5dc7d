"""Shapes world: seeded procedural scenes of coloured shapes and stick figures, with exact layouts.

A world small enough to train a text-to-image model and its grounding adapters on a CPU, and to measure grounding
with plain opencv: every object has one flat colour from a small palette on a plain background. A scene holds 1-4
shapes and/or stick figures at random positions, sizes and depths; nearer objects are drawn later (they occlude) and
are brighter in the depth map (inverse depth, as MiDaS maps that GLIGEN trained on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..layout import COCO_SKELETON

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
BACKGROUND = (235, 235, 235)
FIGURE_COLOUR = (30, 30, 30)
FIGURE_STROKE, FIGURE_HEAD = 0.03, 0.04  # limb thickness and head radius, in image units
FIGURE_MARGIN = FIGURE_HEAD  # the head and strokes reach this far past the joints
SUPERSAMPLE = 4  # draw large, then area-downsample: smooth edges at 64x64 without anti-aliasing artefacts


@dataclass(frozen=True)
class Shape:
    """A filled shape; ``center`` and ``size`` (the side of its bounding square) are in [0, 1] image units."""

    kind: str
    colour: str
    center: tuple[float, float]
    size: float
    depth: float  # 0 far ... 1 near

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.kind}"

    def polygon(self, scale: float) -> np.ndarray:
        """(N, 2) int32 outline in pixels of a ``scale``-sized canvas (circles: a 64-gon)."""
        cx, cy, half = self.center[0] * scale, self.center[1] * scale, self.size * scale / 2
        if self.kind == "circle":
            angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
            points = np.stack([cx + half * np.cos(angles), cy + half * np.sin(angles)], axis=1)
        elif self.kind == "square":
            points = np.array([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half],
                               [cx - half, cy + half]])
        else:  # upright triangle filling its bounding square
            points = np.array([[cx, cy - half], [cx + half, cy + half], [cx - half, cy + half]])
        return np.round(points).astype(np.int32)

    @property
    def box(self) -> tuple[float, float, float, float]:
        half = self.size / 2
        x, y = self.center
        return (x - half, y - half, x + half, y + half)


@dataclass(frozen=True)
class StickFigure:
    """A person drawn as COCO-17 limbs; ``points`` is (17, 2) in [0, 1] image units, all joints visible."""

    points: np.ndarray = field(compare=False)
    depth: float = 0.5
    phrase: str = "a person"

    @property
    def box(self) -> tuple[float, float, float, float]:
        (x0, y0), (x1, y1) = self.points.min(axis=0), self.points.max(axis=0)
        m = FIGURE_MARGIN
        return (float(x0 - m), float(y0 - m), float(x1 + m), float(y1 + m))


Item = Shape | StickFigure


@dataclass
class Scene:
    """Items far to near, with the drawn image, depth map and the layout dict of the core schema."""

    items: list[Item]
    image: np.ndarray  # (S, S, 3) uint8 RGB
    depth: np.ndarray  # (S, S) uint8, near = bright, background 0

    @property
    def caption(self) -> str:
        phrases = [item.phrase for item in sorted(self.items, key=lambda item: item.box[0])]
        return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]

    def layout(self) -> dict:
        """Boxes (every item) with phrases and the figures' keypoints, normalised units."""
        boxes = [{"box": [round(float(v), 4) for v in np.clip(item.box, 0, 1)], "phrase": item.phrase}
                 for item in self.items]
        persons = [{"points": [[round(float(x), 4), round(float(y), 4), 2] for x, y in item.points]}
                   for item in self.items if isinstance(item, StickFigure)]
        return {"boxes": boxes, "keypoints": persons} if persons else {"boxes": boxes}


def sample_shape(rng: np.random.Generator) -> Shape:
    size = float(rng.uniform(0.2, 0.45))
    center = tuple(float(c) for c in rng.uniform(size / 2, 1 - size / 2, 2))
    return Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), center, size, float(rng.uniform(0.2, 1)))


def sample_pose(rng: np.random.Generator) -> np.ndarray:
    """A random standing-ish COCO-17 pose, (17, 2) in [0, 1]: torso, head, and limbs at random angles."""
    height = rng.uniform(0.45, 0.8)
    unit = height / 8  # a figure is about 8 head-heights tall
    hip_y = rng.uniform(0.1 + 4 * unit, 0.9 - 4 * unit)
    cx = rng.uniform(0.15 + unit, 0.85 - unit)
    neck = np.array([cx, hip_y - 3 * unit])
    points = np.zeros((17, 2))
    points[0] = neck + [0, -1.2 * unit]  # nose
    points[1:3] = points[0] + [[-0.25 * unit, -0.25 * unit], [0.25 * unit, -0.25 * unit]]  # eyes (left, right)
    points[3:5] = points[0] + [[-0.5 * unit, 0], [0.5 * unit, 0]]  # ears
    # COCO's "left" is the person's left, which faces the viewer and so appears on the image's right
    points[5:7] = neck + [[unit, 0], [-unit, 0]]  # shoulders
    points[11:13] = [[cx + 0.7 * unit, hip_y], [cx - 0.7 * unit, hip_y]]  # hips
    for joint, parent, side in ((7, 5, 1), (8, 6, -1), (13, 11, 1), (14, 12, -1)):  # elbows, knees
        angle = math.pi / 2 - side * rng.uniform(0.1, 1.4 if joint < 9 else 0.6)
        points[joint] = points[parent] + 1.5 * unit * np.array([math.cos(angle), math.sin(angle)])
    for joint, parent in ((9, 7), (10, 8), (15, 13), (16, 14)):  # wrists, ankles continue with a bend
        direction = points[parent] - points[parent - 2]
        turn = rng.uniform(-0.8, 0.8)
        c, s = math.cos(turn), math.sin(turn)
        rotation = np.array([[c, -s], [s, c]])
        points[joint] = points[parent] + rotation @ direction
    return np.clip(points, 0.02, 0.98)


def overlap(a: Item, b: Item, *, gap: float = 0.03) -> float:
    """Intersection of two items' boxes, each grown by ``gap``, as a fraction of the smaller grown box.

    Growing the boxes makes 0 mean "apart", not merely "touching": touching same-colour shapes read as one blob.
    """
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = (
        (x0 - gap, y0 - gap, x1 + gap, y1 + gap) for x0, y0, x1, y1 in (a.box, b.box)
    )
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    return inter / min((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0))


def sample_items(
    rng: np.random.Generator,
    *,
    num_objects: int | None = None,
    max_objects: int = 4,
    figure_prob: float = 0.3,
    max_overlap: float = 1.0,
) -> list[Item]:
    """``num_objects`` (default: 1..max_objects at random) items, sorted far to near.

    With ``figure_prob`` the first one is a stick figure. Each new item is redrawn (up to 100 times) until it overlaps
    no earlier one by more than ``max_overlap`` of the smaller box; evaluation uses a low value so that every object
    stays visible, training the default so that occlusion is seen.
    """
    count = num_objects or int(rng.integers(1, max_objects + 1))
    for _ in range(100):  # a crowded draw may leave no room: start the scene over
        items: list[Item] = []
        if rng.random() < figure_prob:
            items.append(StickFigure(sample_pose(rng), depth=float(rng.uniform(0.2, 1))))
        for _ in range(100 * count):
            if len(items) == count:
                return sorted(items, key=lambda item: item.depth)
            candidate = sample_shape(rng)
            if all(overlap(candidate, item) <= max_overlap for item in items):
                items.append(candidate)
    raise ValueError(f"cannot place {count} objects with max_overlap={max_overlap}; allow more overlap")


def render(items: list[Item], *, size: int = 64) -> Scene:
    """Draw items far to near into an RGB image and an inverse-depth map, both ``size`` x ``size``."""
    canvas = size * SUPERSAMPLE
    image = np.full((canvas, canvas, 3), BACKGROUND, np.uint8)
    depth = np.zeros((canvas, canvas), np.uint8)
    for item in items:
        mask = np.zeros((canvas, canvas), np.uint8)
        if isinstance(item, Shape):
            cv2.fillPoly(mask, [item.polygon(canvas)], 255)
            colour = COLOURS[item.colour]
        else:
            thickness = max(1, round(canvas * FIGURE_STROKE))
            pixels = np.round(item.points * canvas).astype(int)
            for a, b in COCO_SKELETON:
                cv2.line(mask, tuple(map(int, pixels[a])), tuple(map(int, pixels[b])), 255, thickness, cv2.LINE_8)
            head = pixels[0]
            cv2.circle(mask, tuple(map(int, head)), max(2, round(canvas * FIGURE_HEAD)), 255, -1)
            colour = FIGURE_COLOUR
        image[mask > 0] = colour
        depth[mask > 0] = round(40 + 215 * item.depth)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    depth = cv2.resize(depth, (size, size), interpolation=cv2.INTER_AREA)
    return Scene(items=items, image=image, depth=depth)


def sample_scene(seed: int, *, size: int = 64, **item_options) -> Scene:
    """The scene numbered ``seed``: the same seed gives the same pixels on every machine.

    ``item_options`` go to :func:`sample_items` (``num_objects``, ``max_objects``, ``figure_prob``, ``max_overlap``).
    """
    rng = np.random.default_rng(seed)
    return render(sample_items(rng, **item_options), size=size)
