"""Tests for gligen_ext.layout: parsing, normalisation and the error message of every bad input."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from gligen_ext.layout import (
    COCO_FLIP_PAIRS,
    COCO_KEYPOINTS,
    COCO_SKELETON,
    MAP_CHANNELS,
    GroundedBox,
    Layout,
    LayoutError,
    PersonKeypoints,
    keep_largest_boxes,
    keep_largest_persons,
    parse_layout,
    parse_layouts,
)

BOX = [0.1, 0.2, 0.5, 0.6]


def _points(v: int = 2, **overrides: list[float]) -> list[list[float]]:
    """17 valid keypoints (x, y spread over the image); ``overrides`` replaces entries by COCO name."""
    pts = [[0.1 + 0.04 * i, 0.2 + 0.03 * i, v] for i in range(17)]
    for name, value in overrides.items():
        pts[COCO_KEYPOINTS.index(name)] = value
    return pts


def _phrase(box: Any, phrase: str = "a cat") -> dict[str, Any]:
    return {"phrase": phrase, "box": box}


def _boxed(box: Any) -> dict[str, Any]:
    """A layout with one phrase box."""
    return {"boxes": [_phrase(box)]}


def _person(**overrides: list[float]) -> dict[str, Any]:
    """A layout with one person whose keypoints are valid except for ``overrides``."""
    return {"keypoints": [{"points": _points(**overrides)}]}


def test_layout_error_is_value_error() -> None:
    assert issubclass(LayoutError, ValueError)
    with pytest.raises(ValueError):
        parse_layout([])


def test_coco_constants() -> None:
    assert len(COCO_KEYPOINTS) == 17 and COCO_KEYPOINTS[0] == "nose" and COCO_KEYPOINTS[-1] == "right_ankle"
    assert len(COCO_FLIP_PAIRS) == 8
    for left, right in COCO_FLIP_PAIRS:
        assert COCO_KEYPOINTS[left].replace("left_", "right_") == COCO_KEYPOINTS[right]
    assert len(COCO_SKELETON) == 19 and len(set(COCO_SKELETON)) == 19
    assert all(0 <= a < 17 and 0 <= b < 17 for a, b in COCO_SKELETON)
    assert (5, 6) in COCO_SKELETON and (0, 1) in COCO_SKELETON  # shoulders, nose-left eye
    assert MAP_CHANNELS == {"depth": 1, "hed": 1, "canny": 1, "normal": 3, "semantic": 1}


def test_full_layout_with_every_key() -> None:
    ref = Image.new("RGBA", (8, 6), (255, 0, 0, 128))
    layout = parse_layout({
        "boxes": [_phrase(BOX, "  a red apple "), {"image": ref, "box": [0.0, 0.0, 1.0, 1.0]}],
        "keypoints": [{"points": _points()}, {"points": np.array(_points(v=1))}],
        "depth": np.arange(12, dtype=np.uint8).reshape(3, 4),
        "hed": torch.full((1, 5, 7), 0.25),
        "canny": np.eye(4, dtype=bool),
        "normal": np.full((4, 5, 3), 128, np.uint8),
        "semantic": np.array([[0, 3], [7, 150]], np.int64),
        "units": "normalized",
    })
    assert [b.phrase for b in layout.boxes] == ["a red apple", None]
    assert layout.boxes[0].box == pytest.approx(tuple(BOX))
    assert layout.boxes[1].image is not None and layout.boxes[1].image.mode == "RGB"
    assert layout.boxes[1].image.size == (8, 6)
    assert [p.points.shape for p in layout.keypoints] == [(17, 3), (17, 3)]
    assert layout.keypoints[0].points.dtype == np.float32
    assert set(np.unique(layout.keypoints[1].points[:, 2])) == {1.0}
    shapes = {k: tuple(v.shape) for k, v in layout.maps.items()}
    assert shapes == {
        "depth": (1, 3, 4), "hed": (1, 5, 7), "canny": (1, 4, 4), "normal": (3, 4, 5), "semantic": (1, 2, 2),
    }
    assert all(t.dtype == torch.float32 for t in layout.maps.values())
    assert torch.equal(layout.maps["semantic"][0], torch.tensor([[0.0, 3.0], [7.0, 150.0]]))  # ids are not scaled
    assert layout.modalities() == {"boxes", "image_boxes", "keypoints", *MAP_CHANNELS}
    assert not layout.is_empty()


@pytest.mark.parametrize("empty", [None, {}, {"boxes": [], "keypoints": None, "depth": None}])
def test_empty_layouts(empty: Any) -> None:
    layout = parse_layout(empty)
    assert layout.is_empty() and layout.modalities() == set()


def test_layout_instance_passes_through() -> None:
    layout = Layout(boxes=[GroundedBox((0.0, 0.0, 1.0, 1.0), phrase="x")])
    assert parse_layout(layout) is layout


def test_modalities_and_box_kinds() -> None:
    image = Image.new("RGB", (4, 4))
    phrase_only = parse_layout(_boxed(BOX))
    image_only = parse_layout({"boxes": [{"image": image, "box": BOX}]})
    assert phrase_only.modalities() == {"boxes"} and image_only.modalities() == {"image_boxes"}
    assert len(phrase_only.phrase_boxes) == 1 and phrase_only.image_boxes == []
    assert len(image_only.image_boxes) == 1 and image_only.phrase_boxes == []
    assert parse_layout({"keypoints": [{"points": _points()}]}).modalities() == {"keypoints"}
    assert parse_layout({"depth": np.zeros((2, 2))}).modalities() == {"depth"}


def test_json_file_with_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "layouts"
    (folder / "maps").mkdir(parents=True)
    Image.new("RGB", (6, 4), (0, 255, 0)).save(folder / "ref.png")
    Image.fromarray(np.full((4, 6), 51, np.uint8)).save(folder / "maps" / "depth.png")
    spec = {"boxes": [{"image": "ref.png", "box": BOX}, _phrase([0, 0, 0.5, 0.5])], "depth": "maps/depth.png"}
    (folder / "layout.json").write_text(json.dumps(spec))
    monkeypatch.chdir(tmp_path)  # relative paths must resolve against the JSON file, not the working directory
    for source in (str(folder / "layout.json"), folder / "layout.json"):
        layout = parse_layout(source)
        assert layout.boxes[0].image is not None and layout.boxes[0].image.getpixel((0, 0)) == (0, 255, 0)
        assert layout.maps["depth"].shape == (1, 4, 6)
        assert torch.allclose(layout.maps["depth"], torch.full((1, 4, 6), 0.2))


def test_json_file_errors(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"^layout: file '.*missing\.json' does not exist"):
        parse_layout(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LayoutError, match=r"^layout: cannot read .* as JSON"):
        parse_layout(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(LayoutError, match=r"^layout: expected a layout dict .* got list"):
        parse_layout(tmp_path / "list.json")
    (tmp_path / "img.json").write_text(json.dumps({"boxes": [{"image": "nope.png", "box": BOX}]}))
    with pytest.raises(LayoutError, match=r"^layout\.boxes\[0\]\.image: file 'nope\.png' does not exist"):
        parse_layout(tmp_path / "img.json")


def test_unreadable_image_file(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(LayoutError, match=r"^layout\.boxes\[0\]\.image: cannot read"):
        parse_layout({"boxes": [{"image": str(tmp_path / "fake.png"), "box": BOX}]})
    with pytest.raises(LayoutError, match=r"^layout\.depth: cannot read"):
        parse_layout({"depth": tmp_path / "fake.png"})


def test_pixel_units() -> None:
    points = _points(nose=[256.0, 128.0, 2], left_eye=[999.0, -5.0, 0])
    spec = {"units": "pixels", "boxes": [_phrase([64, 128, 512, 256])], "keypoints": [{"points": points}]}
    layout = parse_layout(spec, width=512, height=256)
    assert layout.boxes[0].box == pytest.approx((0.125, 0.5, 1.0, 1.0))
    assert layout.keypoints[0].points[0].tolist() == pytest.approx([0.5, 0.5, 2.0])
    assert layout.keypoints[0].points[1].tolist() == [0.0, 0.0, 0.0]  # absent: coordinates ignored and zeroed
    with pytest.raises(LayoutError, match=r"^layout\.units: 'pixels' needs the image size; pass width= and height=$"):
        parse_layout({"units": "pixels", "boxes": [_phrase([0, 0, 10, 10])]}, width=512)
    with pytest.raises(LayoutError, match=r"^layout\.units: width and height must be positive"):
        parse_layout({"units": "pixels"}, width=0, height=64)
    with pytest.raises(LayoutError, match=r"^layout\.boxes\[0\]\.box: x1 = 600 is outside the image.*\[0, 512\]"):
        parse_layout({"units": "pixels", "boxes": [_phrase([0, 0, 600, 10])]}, width=512, height=512)


def test_parse_layouts_per_prompt_broadcast_and_mismatch() -> None:
    a, b = {"boxes": [_phrase(BOX, "a")]}, {"boxes": [_phrase(BOX, "b")]}
    parsed = parse_layouts([a, b, None], batch_size=3)
    assert [[x.phrase for x in lay.boxes] for lay in parsed] == [["a"], ["b"], []]
    shared = parse_layouts(a, batch_size=4)
    assert len(shared) == 4 and all(lay is shared[0] for lay in shared)
    assert len(parse_layouts(a)) == 1 and len(parse_layouts(None, batch_size=2)) == 2
    assert len(parse_layouts((a, b))) == 2
    with pytest.raises(LayoutError, match=r"^layouts: got 2 layouts for 3 prompts"):
        parse_layouts([a, b], batch_size=3)
    with pytest.raises(LayoutError, match=r"^layouts\[1\]\.boxes\[0\]\.box: x1 \(0\.10\) must be greater than x0"):
        parse_layouts([a, _boxed([0.4, 0.1, 0.1, 0.5])])
    with pytest.raises(LayoutError, match=r"^layouts\[0\]\.units: 'pixels' needs the image size"):
        parse_layouts([{"units": "pixels"}])
    layouts = parse_layouts([{"units": "pixels", "boxes": [_phrase([0, 0, 32, 16])]}], width=64, height=64)
    assert layouts[0].boxes[0].box == pytest.approx((0.0, 0.0, 0.5, 0.25))


def test_exact_box_order_message() -> None:
    boxes = [_phrase(BOX), _phrase(BOX), _phrase([0.4, 0.2, 0.1, 0.6])]
    with pytest.raises(LayoutError) as info:
        parse_layout({"boxes": boxes})
    assert str(info.value) == "layout.boxes[2].box: x1 (0.10) must be greater than x0 (0.40)"


@pytest.mark.parametrize(("bad", "expected"), [
    ({"boxs": []}, "layout: unknown key 'boxs' (did you mean 'boxes'?)"),
    ({"boxes": [{"phrse": "a cat", "box": BOX}]}, "layout.boxes[0]: unknown key 'phrse' (did you mean 'phrase'?)"),
    ({"keypoints": [{"points": _points(), "pts": 1}]}, "layout.keypoints[0]: unknown key 'pts'"),
])
def test_did_you_mean(bad: dict[str, Any], expected: str) -> None:
    with pytest.raises(LayoutError) as info:
        parse_layout(bad)
    assert str(info.value).startswith(expected)
    assert "allowed keys are" in str(info.value)


_NAN, _INF = float("nan"), float("inf")
_BAD_LAYOUTS: list[tuple[Any, str]] = [
    # top level
    ([], "layout: expected a layout dict or a JSON file path, got list"),
    (5, "layout: expected a layout dict"),
    ({"colour": 1}, "layout: unknown key 'colour'"),
    ({1: 2}, "layout: unknown key 1"),
    ({"units": "normalised"},
     "layout.units: expected 'normalized' or 'pixels', got 'normalised' (did you mean 'normalized'?)"),
    ({"units": 1}, "layout.units: expected 'normalized' or 'pixels'"),
    # boxes
    ({"boxes": _phrase(BOX)}, "layout.boxes: expected a list of boxes"),
    ({"boxes": "a cat"}, "layout.boxes: expected a list"),
    ({"boxes": ["a cat"]}, "layout.boxes[0]: expected a dict"),
    ({"boxes": [{"phrase": "a", "image": Image.new("RGB", (2, 2)), "box": BOX}]},
     "layout.boxes[0]: give either 'phrase' or 'image', not both; use two boxes for both"),
    ({"boxes": [{"box": BOX}]}, "layout.boxes[0]: needs a 'phrase' (text) or an 'image'"),
    ({"boxes": [{"phrase": "a cat"}]}, "layout.boxes[0]: missing 'box'"),
    ({"boxes": [_phrase(BOX, "   ")]}, "layout.boxes[0].phrase: expected a non-empty string"),
    ({"boxes": [_phrase(BOX, "")]}, "layout.boxes[0].phrase: expected a non-empty string"),
    ({"boxes": [{"phrase": 3, "box": BOX}]}, "layout.boxes[0].phrase: expected a non-empty string"),
    (_boxed(BOX[:3]), "layout.boxes[0].box: expected 4 numbers [x0, y0, x1, y1], got 3"),
    (_boxed([*BOX, 1.0]), "layout.boxes[0].box: expected 4 numbers [x0, y0, x1, y1], got 5"),
    (_boxed([[0.1, 0.2], [0.5, 0.6]]), "layout.boxes[0].box: expected 4 numbers"),
    (_boxed([[0.1], [0.2], [0.5], [0.6]]), "layout.boxes[0].box[0]: expected a number"),
    (_boxed("0 0 1 1"), "layout.boxes[0].box: expected a list of numbers [x0, y0, x1, y1], got str"),
    (_boxed(0.5), "layout.boxes[0].box: expected a list"),
    (_boxed([0.1, "0.2", 0.5, 0.6]), "layout.boxes[0].box[1]: expected a number of [x0, y0, x1, y1], got str '0.2'"),
    (_boxed([True, 0.2, 0.5, 0.6]), "layout.boxes[0].box[0]: expected a number"),
    (_boxed([_NAN, 0.2, 0.5, 0.6]), "layout.boxes[0].box: x0 is nan; coordinates must be finite"),
    (_boxed([0.1, 0.2, _INF, 0.6]), "layout.boxes[0].box: x1 is inf"),
    (_boxed([0.1, 0.2, 1.5, 0.6]), "layout.boxes[0].box: x1 = 1.5 is outside the image"),
    (_boxed([0.1, -0.2, 0.5, 0.6]), "layout.boxes[0].box: y0 = -0.2 is outside the image"),
    (_boxed([0.1, 0.2, 0.1, 0.6]), "layout.boxes[0].box: x1 (0.10) must be greater than x0 (0.10)"),
    (_boxed([0.1, 0.6, 0.5, 0.2]), "layout.boxes[0].box: y1 (0.20) must be greater than y0 (0.60)"),
    ({"boxes": [{"image": "surely/missing.png", "box": BOX}]},
     "layout.boxes[0].image: file 'surely/missing.png' does not exist"),
    ({"boxes": [{"image": 5, "box": BOX}]}, "layout.boxes[0].image: expected a non-empty PIL image"),
    ({"boxes": [{"image": Image.new("RGB", (0, 0)), "box": BOX}]}, "layout.boxes[0].image: expected a non-empty"),
    # keypoints
    ({"keypoints": {"points": _points()}}, "layout.keypoints: expected a list of persons"),
    ({"keypoints": [_points()]}, "layout.keypoints[0]: expected a dict"),
    ({"keypoints": [{}]}, "layout.keypoints[0]: expected a dict"),
    ({"keypoints": [{"points": "nose"}]}, "layout.keypoints[0].points: expected a list"),
    ({"keypoints": [{"points": _points()[:16]}]},
     "layout.keypoints[0].points: expected 17 keypoints in COCO order, got 16"),
    (_person(left_shoulder=[0.5, 0.5]), "layout.keypoints[0].points[5]: expected 3 numbers [x, y, v], got 2"),
    (_person(left_shoulder=[0.5, 0.5, 3]),
     "layout.keypoints[0].points[5]: v must be 0 (absent), 1 (occluded) or 2 (visible), got 3"),
    (_person(left_shoulder=[0.5, 0.5, 1.5]), "layout.keypoints[0].points[5]: v must be"),
    (_person(left_shoulder=[0.5, 0.5, _NAN]), "layout.keypoints[0].points[5]: v must be"),
    (_person(left_shoulder=[1.2, 0.5, 2]), "layout.keypoints[0].points[5]: x = 1.2 is outside"),
    (_person(left_shoulder=[0.5, _NAN, 1]), "layout.keypoints[0].points[5]: y is nan"),
    (_person(left_shoulder=[0.5, "0.5", 1]), "layout.keypoints[0].points[5][1]: expected a number"),
    # maps
    ({"depth": [[0.0, 1.0]]}, "layout.depth: expected a PIL image, ndarray, tensor or image path, got list"),
    ({"depth": "surely/missing_depth.png"}, "layout.depth: file 'surely/missing_depth.png' does not exist"),
    ({"depth": np.zeros((1, 1, 4, 4))}, "layout.depth: got 4 dims, shape (1, 1, 4, 4); expected (H, W) or (H, W, C)"),
    ({"depth": np.zeros(4)}, "layout.depth: got 1 dims"),
    ({"depth": np.zeros((4, 4, 4))}, "layout.depth: got 3 dims, shape (4, 4, 4)"),
    ({"depth": torch.zeros(4, 4, 3)},
     "layout.depth: got 3 dims, shape (4, 4, 3); expected (H, W) or (C, H, W) for torch tensors"),
    ({"depth": np.zeros((0, 4))}, "layout.depth: the map has no pixels (shape (0, 4))"),
    ({"hed": torch.zeros(1, 0, 3)}, "layout.hed: the map has no pixels"),
    ({"depth": np.array([["a", "b"]])}, "layout.depth: dtype <U1 is not numeric"),
    ({"depth": np.array([[object()]])}, "layout.depth: dtype object is not numeric"),
    ({"depth": np.ones((2, 2), np.complex64)}, "layout.depth: dtype complex64 is not numeric"),
    ({"canny": torch.ones(2, 2, dtype=torch.complex64)}, "layout.canny: dtype complex64 is not numeric"),
    ({"depth": np.array([[0.5, _NAN]])}, "layout.depth: the map contains NaN or inf"),
    ({"depth": torch.tensor([[0.5, _INF]])}, "layout.depth: the map contains NaN or inf"),
    ({"depth": np.array([[0.0, 255.0]])},
     "layout.depth: values span [0, 255]; scale them to [0, 1] (e.g. divide by the maximum)"),
    ({"hed": np.array([[-0.5, 0.5]], np.float32)}, "layout.hed: values span [-0.5, 0.5]; scale them to [0, 1]"),
    ({"depth": np.array([[-3, 5]], np.int16)}, "layout.depth: values span [-3, 5]; negative integers"),
    ({"depth": np.array([[0, 70000]], np.int32)}, "layout.depth: values span [0, 7e+04]; integer maps must be"),
    ({"normal": np.zeros((4, 4), np.uint8)}, "layout.normal: 'normal' maps need 3 channels (x, y, z), got 1"),
    ({"normal": torch.zeros(1, 4, 4)}, "layout.normal: 'normal' maps need 3 channels"),
    ({"semantic": np.array([[0.0, 1.5]])}, "layout.semantic: semantic maps hold integer class ids >= 0"),
    ({"semantic": np.array([[0, -1]])},
     "layout.semantic: semantic maps hold integer class ids >= 0, but values span [-1, 0]"),
    ({"semantic": np.stack([np.zeros((2, 2)), np.ones((2, 2)), np.zeros((2, 2))], -1)},
     "layout.semantic: semantic maps need one class id per pixel"),
]


@pytest.mark.parametrize(("bad", "expected"), _BAD_LAYOUTS)
def test_bad_layouts_name_the_field(bad: Any, expected: str) -> None:
    with pytest.raises(LayoutError) as info:
        parse_layout(bad)
    assert str(info.value).startswith(expected), str(info.value)


def test_keep_largest_boxes(caplog: pytest.LogCaptureFixture) -> None:
    boxes = [GroundedBox((0.0, 0.0, w, w), phrase=str(i)) for i, w in enumerate([0.2, 0.9, 0.1, 0.5, 0.7])]
    with caplog.at_level(logging.WARNING, logger="gligen_ext.layout"):
        kept = keep_largest_boxes(boxes, 3)
    assert [b.phrase for b in kept] == ["1", "3", "4"]  # the three largest, in the input order
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    assert "Dropped 2 of 5 boxes" in caplog.text and "at most 3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gligen_ext.layout"):
        assert keep_largest_boxes(boxes, 5) == boxes and keep_largest_boxes([], 3) == []
    assert not caplog.records


def test_keep_largest_persons(caplog: pytest.LogCaptureFixture) -> None:
    def person(scale: float) -> PersonKeypoints:
        pts = np.array(_points(), np.float32)
        pts[:, :2] *= scale
        return PersonKeypoints(pts)

    persons = [person(0.5), person(1.0), person(0.2)]
    with caplog.at_level(logging.WARNING, logger="gligen_ext.layout"):
        kept = keep_largest_persons(persons, 2)
    assert kept == persons[:2] and "Dropped 1 of 3 persons" in caplog.text


def test_person_area_and_readonly_points() -> None:
    pts = [[0.0, 0.0, 0]] * 17
    pts[0], pts[1], pts[2] = [0.1, 0.2, 2], [0.5, 0.6, 1], [0.9, 0.9, 0]  # the absent point must not count
    person = parse_layout({"keypoints": [{"points": pts}]}).keypoints[0]
    assert person.area == pytest.approx(0.4 * 0.4)
    assert person.points[2].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        person.points[0, 0] = 1.0
    assert PersonKeypoints(np.zeros((17, 3), np.float32)).area == 0.0
    assert GroundedBox((0.0, 0.5, 0.5, 1.0)).area == pytest.approx(0.25)


@pytest.mark.parametrize(("value", "expected"), [
    (np.array([[0, 51, 255]], np.uint8), [0.0, 0.2, 1.0]),
    (np.array([[0, 13107, 65535]], np.uint16), [0.0, 0.2, 1.0]),
    (np.array([[False, True, True]]), [0.0, 1.0, 1.0]),
    (np.array([[0.0, 0.2, 1.0]], np.float64), [0.0, 0.2, 1.0]),
    (np.array([[0.0, 0.2, 1.0]], np.float16), [0.0, 0.2, 1.0]),
    (np.array([[0, 51, 255]], np.int64), [0.0, 0.2, 1.0]),  # 8-bit values in a wide integer type
    (np.array([[0, 13107, 65535]], np.int32), [0.0, 0.2, 1.0]),  # 16-bit values in a wide integer type
    (torch.tensor([[[0, 51, 255]]], dtype=torch.uint8), [0.0, 0.2, 1.0]),
    (torch.tensor([[0.0, 0.2, 1.0]], dtype=torch.bfloat16), [0.0, 0.2, 1.0]),
    (np.repeat(np.array([[0, 51, 255]], np.uint8)[..., None], 3, axis=-1), [0.0, 0.2, 1.0]),  # greyscale as RGB
    (np.array([[[0, 0, 255], [51, 51, 51], [255, 255, 255]]], np.uint8), [1 / 3, 0.2, 1.0]),  # RGB: channel mean
    (Image.fromarray(np.array([[0, 51, 255]], np.uint8)), [0.0, 0.2, 1.0]),
    (Image.fromarray(np.array([[0, 51, 255]], np.uint8)).convert("RGBA"), [0.0, 0.2, 1.0]),
])
def test_map_scaling(value: Any, expected: list[float]) -> None:
    depth = parse_layout({"depth": value}).maps["depth"]
    assert depth.dtype == torch.float32 and depth.shape == (1, 1, 3)
    assert torch.allclose(depth[0, 0], torch.tensor(expected), atol=2e-3)


def test_map_16bit_png_and_tensor_handling(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 13107, 65535]], np.uint16)).save(tmp_path / "depth16.png")
    depth = parse_layout({"depth": str(tmp_path / "depth16.png")}).maps["depth"]
    assert torch.allclose(depth, torch.tensor([[[0.0, 0.2, 1.0]]]), atol=1e-6)
    hed = torch.rand(1, 4, 4, requires_grad=True)
    parsed = parse_layout({"hed": hed}).maps["hed"]
    assert not parsed.requires_grad and parsed.device.type == "cpu" and torch.allclose(parsed, hed.detach())
    normal = parse_layout({"normal": torch.rand(3, 2, 5)}).maps["normal"]
    assert normal.shape == (3, 2, 5)
    assert parse_layout({"normal": Image.new("RGB", (5, 2), (255, 128, 0))}).maps["normal"].shape == (3, 2, 5)


def test_semantic_maps_keep_class_ids() -> None:
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)
    palette.putdata([0, 2, 3])
    ids = np.array([[0, 2, 3]], np.uint8)
    cases = [palette, ids, ids.astype(np.float64), torch.tensor(ids[None]), np.repeat(ids[..., None], 3, axis=-1),
             Image.fromarray(ids.astype(np.int32))]
    for value in cases:
        semantic = parse_layout({"semantic": value}).maps["semantic"]
        assert semantic.dtype == torch.float32 and semantic.tolist() == [[[0.0, 2.0, 3.0]]], type(value)


_unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
_interval = st.tuples(_unit, _unit).filter(lambda t: t[0] < t[1])


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.lists(st.tuples(_interval, _interval), max_size=8))
def test_valid_boxes_round_trip(spans: list[tuple[tuple[float, float], tuple[float, float]]]) -> None:
    boxes = [(x0, y0, x1, y1) for (x0, x1), (y0, y1) in spans]
    layout = parse_layout({"boxes": [_phrase(list(b)) for b in boxes]})
    assert len(layout.boxes) == len(boxes)
    for parsed, original in zip(layout.boxes, boxes):
        assert all(math.isclose(p, o, abs_tol=1e-6) for p, o in zip(parsed.box, original))


def _pixel_span(size: int) -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(st.integers(0, size), st.integers(0, size)).filter(lambda t: t[0] < t[1])


@settings(derandomize=True, max_examples=40, deadline=None)
@given(st.lists(st.tuples(_pixel_span(640), _pixel_span(480)), max_size=6))
def test_valid_pixel_boxes_round_trip(spans: list[tuple[tuple[int, int], tuple[int, int]]]) -> None:
    width, height = 640, 480
    boxes = [[x0, y0, x1, y1] for (x0, x1), (y0, y1) in spans]
    layout = parse_layout({"units": "pixels", "boxes": [_phrase(b) for b in boxes]}, width=width, height=height)
    for parsed, (x0, y0, x1, y1) in zip(layout.boxes, boxes, strict=True):
        expected = (x0 / width, y0 / height, x1 / width, y1 / height)
        assert all(math.isclose(p, o, abs_tol=1e-6) for p, o in zip(parsed.box, expected))


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.tuples(_unit, _unit).filter(lambda t: t[1] <= t[0]), _interval)
def test_boxes_with_x1_not_greater_than_x0_raise(xs: tuple[float, float], ys: tuple[float, float]) -> None:
    (x0, x1), (y0, y1) = xs, ys
    with pytest.raises(LayoutError, match=r"^layout\.boxes\[0\]\.box: x1 \(\d\.\d\d\) must be greater than x0"):
        parse_layout(_boxed([x0, y0, x1, y1]))
