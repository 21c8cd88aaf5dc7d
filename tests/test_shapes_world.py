"""Shapes world scenes: seeded determinism, and annotations that match the pixels."""

import numpy as np
import pytest

from gligen_ext import parse_layout
from gligen_ext.shapes_world import COLOURS, Shape, StickFigure, sample_scene
from gligen_ext.shapes_world.scenes import BACKGROUND


def test_scenes_are_deterministic_per_seed():
    a, b, c = sample_scene(7), sample_scene(7), sample_scene(8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.depth, b.depth) and a.layout() == b.layout()
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(40))
def test_annotations_match_pixels(seed):
    scene = sample_scene(seed, figure_prob=0.5)
    size = scene.image.shape[0]
    parsed = parse_layout(scene.layout())
    assert len(parsed.boxes) == len(scene.items) and 1 <= len(scene.items) <= 4
    assert all(box.phrase in scene.caption for box in parsed.boxes)
    covered = np.zeros((size, size), bool)
    for item, box in zip(scene.items, parsed.boxes):
        x0, y0, x1, y1 = (round(v * size) for v in box.box)
        covered[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
        if isinstance(item, Shape):
            # the nearest item is fully visible: its colour fills a good part of its box
            if item is scene.items[-1]:
                patch = scene.image[y0:y1, x0:x1].astype(int)
                match = (np.abs(patch - COLOURS[item.colour]).sum(-1) < 30).mean()
                assert match > 0.4, (item, match)
        else:
            assert isinstance(item, StickFigure)
            assert len(parsed.keypoints) == 1 and parsed.keypoints[0].points[:, 2].min() == 2
    # nothing is drawn outside the boxes, and the depth map is non-zero exactly where something is drawn
    drawn = np.abs(scene.image.astype(int) - BACKGROUND).sum(-1) > 30
    assert not (drawn & ~covered).any()
    assert ((scene.depth > 20) == drawn).mean() > 0.97
