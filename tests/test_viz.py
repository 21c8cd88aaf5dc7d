"""Tests for gligen_ext.viz: behaviour of the overlays (what changes where), not pinned pixel values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gligen_ext.layout import COCO_KEYPOINTS, parse_layout
from gligen_ext.viz import (
    beside,
    colorize_map,
    draw_boxes,
    draw_keypoints,
    draw_layout,
    image_grid,
    overlay_layout,
)

GREY = (128, 128, 128)


def _grey(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), GREY)


def _changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    """(H, W) bool mask of the pixels that differ."""
    return (np.asarray(before, np.int16) != np.asarray(after, np.int16)).any(axis=-1)


def _person(**joints: tuple[float, float, int]) -> dict:
    """One person whose joints are all absent (v = 0) except ``joints``, given by COCO name as (x, y, v)."""
    points = [[0.0, 0.0, 0]] * len(COCO_KEYPOINTS)
    for name, point in joints.items():
        points[COCO_KEYPOINTS.index(name)] = list(point)
    return {"points": points}


@pytest.mark.parametrize("size", [(64, 64), (640, 384)])
def test_draw_boxes_marks_border_and_leaves_far_pixels(size):
    w, h = size
    image = _grey(w, h)
    before = np.asarray(image).copy()
    out = draw_boxes(image, {"boxes": [{"phrase": "a cat", "box": [0.25, 0.5, 0.5, 0.9]}]})
    assert out.mode == "RGB" and out.size == size
    assert np.array_equal(np.asarray(image), before)  # input untouched
    changed = _changed(image, out)
    x0, y0, y1 = round(0.25 * w), round(0.5 * h), round(0.9 * h)
    assert changed[(y0 + y1) // 2, x0]  # left edge, away from the label
    assert not changed[:, round(0.8 * w) :].any()  # right of the box and its (wider) label
    assert not changed[round(0.95 * h) :].any()  # below the box
    assert not changed[: round(0.2 * h)].any()  # well above the label
    assert not changed[(y0 + y1) // 2, round(0.35 * w)]  # box interior stays clear


def test_draw_boxes_distinct_colours_image_thumbnail_and_pixel_units():
    image = _grey(640, 384)
    ref = Image.new("RGB", (32, 32), (255, 0, 0))
    layout = {
        "units": "pixels",
        "boxes": [{"phrase": "dog", "box": [20, 100, 200, 300]}, {"image": ref, "box": [300, 100, 600, 350]}],
    }
    arr = np.asarray(draw_boxes(image, layout))
    left_a, left_b = arr[200, 20], arr[220, 300]
    assert tuple(left_a) != GREY and tuple(left_b) != GREY and tuple(left_a) != tuple(left_b)
    # the reference thumbnail sits in the image box's bottom-right corner
    corner = arr[300:345, 550:595].reshape(-1, 3)
    assert ((corner == (255, 0, 0)).all(axis=1)).sum() > 100


def test_draw_boxes_accepts_layout_and_explicit_sizes():
    layout = parse_layout({"boxes": [{"phrase": "x", "box": [0.1, 0.1, 0.9, 0.9]}]})
    image = _grey(128, 128)
    thin = _changed(image, draw_boxes(image, layout, thickness=1, font_scale=0.3)).sum()
    thick = _changed(image, draw_boxes(image, layout, thickness=5, font_scale=0.3)).sum()
    assert thick > thin > 0


def test_draw_keypoints_draws_visible_joints_and_skips_absent_ones():
    image = _grey(128, 128)
    # nose and left eye visible (limb 0-1 between them); every other joint absent, stored at (0, 0)
    layout = {"keypoints": [_person(nose=(0.3, 0.5, 2), left_eye=(0.7, 0.5, 2))]}
    out = draw_keypoints(image, layout)
    changed = _changed(image, out)
    assert changed[64, 38] and changed[64, 90]  # the joints
    assert changed[64, 64]  # the limb between them
    assert not changed[:20, :20].any()  # no joint or limb at the absent joints' (0, 0)
    assert not changed[:50].any() and not changed[80:].any()
    assert np.array_equal(np.asarray(image), np.full((128, 128, 3), 128))


def test_draw_keypoints_occluded_joint_is_hollow():
    image = _grey(128, 128)
    out = draw_keypoints(image, {"keypoints": [_person(left_ankle=(0.5, 0.5, 1))]}, radius=8, thickness=1)
    changed = _changed(image, out)
    assert changed[64, 72] or changed[64, 56]  # the ring
    assert not changed[62:67, 62:67].any()  # the hollow centre


def test_draw_keypoints_colours_people_differently():
    image = _grey(128, 128)
    layout = {"keypoints": [_person(nose=(0.25, 0.5, 2)), _person(nose=(0.75, 0.5, 2))]}
    arr = np.asarray(draw_keypoints(image, layout, radius=5))
    assert tuple(arr[64, 32]) != tuple(arr[64, 96])


@pytest.mark.parametrize(
    "name, value",
    [
        ("depth", torch.rand(1, 16, 24)),
        ("hed", torch.rand(1, 16, 24)),
        ("canny", (torch.rand(1, 16, 24) > 0.5).float()),
        ("normal", torch.rand(3, 16, 24)),
        ("semantic", torch.randint(0, 150, (1, 16, 24)).float()),
    ],
)
def test_colorize_map_every_kind(name, value):
    original = value.clone()
    out = colorize_map(name, value, size=(40, 30))
    assert out.mode == "RGB" and out.size == (40, 30)
    assert colorize_map(name, value).size == (24, 16)
    assert torch.equal(value, original)


def test_colorize_map_semantic_colours_are_fixed_per_class():
    a = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    b = torch.tensor([[[2.0, 7.0], [7.0, 0.0]]])
    arr_a, arr_b = np.asarray(colorize_map("semantic", a)), np.asarray(colorize_map("semantic", b))
    assert tuple(arr_a[1, 0]) == tuple(arr_a[1, 1]) == tuple(arr_b[0, 0])  # class 2 in both maps
    assert tuple(arr_a[0, 0]) == tuple(arr_b[1, 1])  # class 0
    assert len({tuple(arr_a[0, 0]), tuple(arr_a[0, 1]), tuple(arr_a[1, 0]), tuple(arr_b[0, 1])}) == 4
    # nearest resizing keeps only the map's own colours
    big = np.asarray(colorize_map("semantic", a, size=(37, 23))).reshape(-1, 3)
    assert {tuple(c) for c in big} == {tuple(arr_a[0, 0]), tuple(arr_a[0, 1]), tuple(arr_a[1, 0])}


def test_beside_scales_to_height_with_gap():
    out = beside(_grey(40, 30), Image.new("L", (20, 15)), Image.new("RGB", (30, 30)), gap=5)
    assert out.mode == "RGB" and out.size == (40 + 5 + 40 + 5 + 30, 30)
    assert tuple(np.asarray(out)[10, 42]) == (255, 255, 255)
    assert beside(_grey(40, 30)).size == (40, 30)


def test_overlay_layout_puts_maps_beside_the_image():
    image = _grey(64, 48)
    boxes = [{"phrase": "tree", "box": [0.1, 0.1, 0.6, 0.9]}]
    depth = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    with_map = overlay_layout(image, {"boxes": boxes, "depth": depth})
    assert with_map.mode == "RGB" and with_map.height == 48 and with_map.width > 64
    assert overlay_layout(image, {"boxes": boxes, "depth": depth}, show_maps=False).size == (64, 48)
    plain = overlay_layout(image, {"boxes": boxes, "keypoints": [_person(nose=(0.8, 0.5, 2))]})
    assert plain.size == (64, 48) and _changed(image, plain).any()
    # the drawn image is the left part of the strip
    assert np.array_equal(np.asarray(with_map)[:, :64], np.asarray(overlay_layout(image, {"boxes": boxes})))


def test_image_grid_size_and_labels():
    images = [Image.new("RGB", (32, 20), (i * 40, 0, 0)) for i in range(4)] + [Image.new("RGB", (64, 64))]
    grid = image_grid(images, cols=3, gap=4)
    assert grid.mode == "RGB" and grid.size == (3 * 32 + 2 * 4, 2 * 20 + 4)
    arr = np.asarray(grid)
    assert tuple(arr[10, 36 + 10]) == (40, 0, 0)  # second cell
    assert tuple(arr[30, 2 * 36 + 10]) == (255, 255, 255)  # empty sixth cell
    labelled = image_grid(images, cols=3, labels=["a", "b", "c", "d", "a very long label that cannot fit"])
    assert labelled.width == grid.width and labelled.height > grid.height
    strip = np.asarray(labelled)[20 : 20 + (labelled.height - grid.height) // 2, :32]
    assert (strip < 200).any()  # the label text under the first cell
    assert image_grid(images).size == (3 * 32 + 2 * 4, 2 * 20 + 4)  # ceil(sqrt(5)) = 3 columns
    with pytest.raises(ValueError):
        image_grid(images, labels=["too", "few"])
    with pytest.raises(ValueError):
        image_grid([])


def test_draw_layout_previews_boxes_keypoints_and_maps():
    layout = {
        "boxes": [{"phrase": "a boat", "box": [0.2, 0.3, 0.8, 0.9]}],
        "keypoints": [_person(nose=(0.5, 0.5, 2), left_eye=(0.6, 0.45, 2))],
    }
    out = draw_layout(layout, width=320, height=200)
    assert out.mode == "RGB" and out.size == (320, 200)
    arr = np.asarray(out)
    background = tuple(arr[195, 5])
    assert tuple(arr[120, 64]) != background  # left box edge
    assert tuple(arr[100, 160]) != background  # nose
    assert draw_layout({}).size == (512, 512)
    semantic = np.zeros((50, 80), np.uint8)
    semantic[:, 40:] = 3
    with_map = np.asarray(draw_layout({**layout, "semantic": semantic}, width=320, height=200))
    assert with_map.shape == (200, 320, 3)
    assert tuple(with_map[195, 5]) != tuple(with_map[195, 315])  # two classes faded in underneath
