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


def test_metrics_score_real_scenes_near_perfect_and_blank_images_zero():
    from gligen_ext.shapes_world.metrics import box_scores, caption_fidelity, depth_iou, keypoint_pck

    scenes = [sample_scene(1000 + i, num_objects=1 + i % 4, max_overlap=0.0, figure_prob=0.5) for i in range(40)]
    successes = [s["success"] for scene in scenes for s in box_scores(scene.image, scene.layout())]
    hits, total = np.sum([keypoint_pck(scene.image, scene.layout()) for scene in scenes], axis=0)
    assert np.mean(successes) > 0.95 and total > 0 and hits / total > 0.95
    assert np.mean([depth_iou(scene.image, scene.depth) for scene in scenes]) > 0.95
    assert np.mean([caption_fidelity(scene.image, scene.caption) for scene in scenes]) > 0.95

    blank = np.full_like(scenes[0].image, BACKGROUND)
    for scene in scenes[:5]:
        assert not any(s["success"] for s in box_scores(blank, scene.layout()))
        assert depth_iou(blank, scene.depth) == 0.0 and not caption_fidelity(blank, scene.caption)


def test_shape_classifier_tells_each_shape_apart():
    from gligen_ext.shapes_world.metrics import detect_objects
    from gligen_ext.shapes_world.scenes import render

    for kind in ("circle", "square", "triangle"):
        for colour in COLOURS:
            (found,) = detect_objects(render([Shape(kind, colour, (0.5, 0.5), 0.4, 0.5)]).image)
            assert (found.shape, found.colour) == (kind, colour)
