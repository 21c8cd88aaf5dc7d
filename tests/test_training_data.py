"""Training records, augmentation and example datasets: decoding, bad rows, layout-consistent augmentation."""

import io
import json
import pickle

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from gligen_ext.layout import COCO_KEYPOINTS, parse_layout
from training.augment import augment
from training.data import LayoutExamples, StreamingLayoutExamples, collate_examples, load_records
from training.records import BadRow, BadRowCounter, decode_record, record_features

LEFT_WRIST, RIGHT_WRIST = COCO_KEYPOINTS.index("left_wrist"), COCO_KEYPOINTS.index("right_wrist")


def picture(width=64, height=48, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def box_layout(*boxes, **extra):
    entries = [{"box": b, "phrase": f"thing {i}"} for i, b in enumerate(boxes)]
    return json.dumps({"units": "normalized", "boxes": entries} | extra)


def person(**joints):
    points = [[0.0, 0.0, 0]] * len(COCO_KEYPOINTS)
    for name, (x, y) in joints.items():
        points[COCO_KEYPOINTS.index(name)] = [x, y, 2]
    return {"points": points}


def make_records(rows, maps=()):
    rows = [{"caption": "a scene", "layout": box_layout([0.1, 0.1, 0.6, 0.7])} | row for row in rows]
    for row in rows:
        row.setdefault("image", picture())
        for name in maps:
            row.setdefault(name, None)
    return datasets.Dataset.from_list(rows, features=record_features(maps))


def test_decode_record_normalises_pixel_units_and_keeps_requested_modalities():
    layout = {"units": "pixels", "boxes": [{"box": [16, 12, 48, 36], "phrase": "cat"}],
              "keypoints": [person(nose=(32, 24))]}
    record = {"image": png_bytes(picture(64, 48)), "caption": "c", "layout": json.dumps(layout)}
    image, caption, decoded = decode_record(record, modalities=["boxes"])
    assert image.mode == "RGB" and image.size == (64, 48) and caption == "c"
    assert decoded["boxes"][0]["box"] == pytest.approx([0.25, 0.25, 0.75, 0.75])
    assert "keypoints" not in decoded
    _, _, decoded = decode_record(record, modalities=["boxes", "keypoints"])
    assert decoded["keypoints"][0]["points"][0] == pytest.approx([0.5, 0.5, 2])
    parse_layout(decoded)  # the result is a valid core layout


def test_bad_row_pickles_and_counter_summarises():
    bad = pickle.loads(pickle.dumps(BadRow("map_size", "depth is 3x3")))
    assert bad.reason == "map_size" and "depth is 3x3" in str(bad)
    counter = BadRowCounter()
    for reason in ("empty_layout", "unreadable_image", "empty_layout"):
        counter.add(reason)
    assert counter.total == 3 and counter.counts == {"empty_layout": 2, "unreadable_image": 1}
    assert counter.summary().startswith("3 bad rows") and "empty_layout 2" in counter.summary()
    with pytest.raises(ValueError, match="reason"):
        BadRow("typo", "x")


def _bad_rows():
    good_image = png_bytes(picture())
    return {
        "unreadable_image": {"image": {"bytes": good_image[: len(good_image) // 2], "path": None}},
        "layout_outside_image": {"layout": box_layout([0.1, 0.1, 1.3, 0.5])},
        "empty_layout": {"layout": json.dumps({"units": "normalized", "boxes": []})},
        "map_size": {"depth": picture(32, 32).convert("L")},
        "bad_layout": {"layout": "{not json"},
    }


@pytest.mark.parametrize("reason", list(_bad_rows()))
def test_each_bad_row_reason_is_returned_not_raised(reason):
    records = make_records([{}, _bad_rows()[reason], {}], maps=("depth",))
    examples = LayoutExamples(records, resolution=32, modalities=["boxes", "depth"], seed=0)
    items = [examples[i] for i in range(3)]
    assert isinstance(items[1], BadRow) and items[1].reason == reason
    batch = collate_examples(items)
    assert batch["indices"].tolist() == [0, 2] and batch["bad_rows"] == [reason]
    assert batch["pixel_values"].shape == (2, 3, 32, 32)


def test_more_bad_rows_pixel_layout_outside_and_keypoints_only_for_boxes():
    pixel_outside = json.dumps({"units": "pixels", "boxes": [{"box": [0, 0, 65, 10], "phrase": "x"}]})
    only_people = json.dumps({"keypoints": [person(nose=(0.5, 0.5))]})
    records = make_records([{"layout": pixel_outside}, {"layout": only_people}])
    examples = LayoutExamples(records, resolution=32, modalities=["boxes"], seed=0)
    assert [examples[i].reason for i in range(2)] == ["layout_outside_image", "empty_layout"]
    keypoint_examples = LayoutExamples(records, resolution=32, modalities=["keypoints"], seed=0)
    assert not isinstance(keypoint_examples[1], BadRow)


def test_examples_are_a_function_of_seed_epoch_and_index():
    records = make_records([{"image": picture(seed=i)} for i in range(4)])
    first = LayoutExamples(records, resolution=32, modalities=["boxes"], seed=3)
    again = LayoutExamples(records, resolution=32, modalities=["boxes"], seed=3)
    for i in (2, 0, 3):  # order of access does not matter
        a, b = first[i], again[i]
        assert a["index"] == i and torch.equal(a["pixel_values"], b["pixel_values"]) and a["layout"] == b["layout"]
        assert a["pixel_values"].shape == (3, 32, 32) and -1 <= a["pixel_values"].min() <= a["pixel_values"].max() <= 1
    views = set()
    for epoch in range(8):
        first.set_epoch(epoch)
        views.add(tuple(first[0]["layout"]["boxes"][0]["box"]))
    assert len(views) > 1  # crops and flips change across epochs


def test_flip_moves_boxes_and_swaps_keypoint_names():
    layout = {"boxes": [{"box": [0.1, 0.2, 0.3, 0.4], "phrase": "ball"}],
              "keypoints": [person(left_wrist=(0.2, 0.5), nose=(0.4, 0.3))]}
    _, flipped = augment(picture(40, 40), layout, resolution=40, rng=np.random.default_rng(0), flip_prob=1.0)
    assert flipped["boxes"][0]["box"] == pytest.approx([0.7, 0.2, 0.9, 0.4])
    points = np.array(flipped["keypoints"][0]["points"])
    assert points[RIGHT_WRIST] == pytest.approx([0.8, 0.5, 2]) and points[LEFT_WRIST][2] == 0
    assert points[COCO_KEYPOINTS.index("nose")] == pytest.approx([0.6, 0.3, 2])


def test_map_under_a_box_stays_under_it_after_crop_resize_flip():
    width, height = 96, 64
    depth = np.zeros((height, width), np.uint8)
    depth[16:40, 50:80] = 255  # pixels under the box [50/96, 16/64, 80/96, 40/64]
    layout = {"boxes": [{"box": [50 / 96, 16 / 64, 80 / 96, 40 / 64], "phrase": "block"}], "depth": depth}
    for seed, flip_prob in [(s, p) for s in range(3) for p in (0.0, 1.0)]:
        image, out = augment(picture(width, height), layout, resolution=32, rng=np.random.default_rng(seed),
                             flip_prob=flip_prob, min_box_area=0.0)
        assert image.size == (32, 32) and out["depth"].shape == (32, 32)
        box = np.array(out["boxes"][0]["box"]) * 32
        (x0, y0), (x1, y1) = np.ceil(box[:2]).astype(int), np.floor(box[2:]).astype(int)
        inside, near = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
        inside[y0:y1, x0:x1] = True
        # resampling blends the pixels that the box edges cut through
        near[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = True
        assert inside.sum() > 20 and out["depth"][inside].min() == 255 and out["depth"][~near].max() == 0


def test_flip_mirrors_normal_x_and_keeps_semantic_ids():
    normal = np.zeros((20, 20, 3), np.uint8)
    normal[..., 0], normal[..., 2] = 200, 255  # a surface facing right
    semantic = np.zeros((20, 20), np.uint8)
    semantic[:, :5] = 7
    layout = {"normal": normal, "semantic": semantic}
    _, out = augment(picture(20, 20), layout, resolution=12, rng=np.random.default_rng(0), flip_prob=1.0)
    assert (out["normal"][..., 0] == 55).all() and (out["normal"][..., 2] == 255).all()
    assert set(np.unique(out["semantic"])) == {0, 7} and (out["semantic"][:, -2:] == 7).all()
    assert (out["semantic"][:, :6] == 0).all()


def test_small_boxes_dropped_and_largest_kept():
    boxes = [{"box": [0, 0, 0.05, 0.05], "phrase": "tiny"}] + [
        {"box": [0, 0, w, w], "phrase": f"w{w}"} for w in (0.2, 0.5, 0.3, 0.9)]
    _, out = augment(picture(50, 50), {"boxes": boxes}, resolution=16, rng=np.random.default_rng(0), flip_prob=0.0,
                     min_box_area=0.01, max_boxes=2)
    assert [b["phrase"] for b in out["boxes"]] == ["w0.5", "w0.9"]
    persons = [person(nose=(0.1, 0.1), left_ankle=(0.1 + s, 0.1 + s)) for s in (0.1, 0.6, 0.3)]
    _, out = augment(picture(50, 50), {"keypoints": persons}, resolution=16, rng=np.random.default_rng(0),
                     flip_prob=0.0, max_persons=2)
    assert [p["points"][COCO_KEYPOINTS.index("left_ankle")][0] for p in out["keypoints"]] == pytest.approx([0.7, 0.4])


def test_streaming_examples_match_map_style_and_resume(tmp_path):
    records = make_records([{"image": picture(seed=i), "caption": f"c{i}"} for i in range(6)])
    records.to_parquet(str(tmp_path / "records.parquet"))
    stream = load_records(tmp_path, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    examples = StreamingLayoutExamples(stream, resolution=16, modalities=["boxes"], seed=1, shuffle_buffer=4)
    items = list(examples)
    assert sorted(e["caption"] for e in items) == [f"c{i}" for i in range(6)]
    assert [e["index"] for e in items] == list(range(6))

    resumed = StreamingLayoutExamples(load_records(tmp_path, streaming=True), resolution=16, modalities=["boxes"],
                                      seed=1, shuffle_buffer=1)
    iterator = iter(resumed)
    head = [next(iterator) for _ in range(2)]
    state = resumed.state_dict()
    tail = list(iterator)
    fresh = StreamingLayoutExamples(load_records(tmp_path, streaming=True), resolution=16, modalities=["boxes"],
                                    seed=1, shuffle_buffer=1)
    fresh.load_state_dict(state)
    again = list(fresh)
    assert [e["caption"] for e in again] == [e["caption"] for e in tail] and len(head) + len(tail) == 6
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) and a["index"] == b["index"]
               for a, b in zip(again, tail))


def test_workers_and_processes_do_not_change_examples(tmp_path):
    rows = [{"image": picture(seed=i), "caption": f"c{i}"} for i in range(6)]
    rows[2]["layout"] = "[]"
    records = make_records(rows)
    records.save_to_disk(str(tmp_path / "saved"))
    examples = LayoutExamples(load_records(tmp_path / "saved"), resolution=16, modalities=["boxes"], seed=2)
    loader = torch.utils.data.DataLoader(examples, batch_size=3, num_workers=2, collate_fn=collate_examples)
    batches = list(loader)
    assert [b["bad_rows"] for b in batches] == [["bad_layout"], []]
    serial = collate_examples([examples[i] for i in range(6)])
    assert torch.equal(torch.cat([b["pixel_values"] for b in batches]), serial["pixel_values"])

    seen = []
    for rank in range(2):  # each rank streams its own part of the rows
        stream = load_records(tmp_path / "saved", streaming=True)
        part = StreamingLayoutExamples(stream, resolution=16, modalities=["boxes"], seed=2, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(part, batch_size=2, num_workers=2, collate_fn=collate_examples)
        seen += [(index, caption) for b in loader for index, caption in zip(b["indices"].tolist(), b["captions"])]
    indices, captions = zip(*seen)
    assert sorted(captions) == ["c0", "c1", "c3", "c4", "c5"] and len(set(indices)) == 5


def test_streaming_jsonl_records_with_image_paths(tmp_path):
    lines = []
    for i in range(3):
        picture(seed=i).save(tmp_path / f"{i}.png")
        lines.append({"image": str(tmp_path / f"{i}.png"), "caption": f"c{i}", "layout": box_layout([0, 0, 1, 1])})
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    stream = load_records(tmp_path / "rows.jsonl", streaming=True)
    items = list(StreamingLayoutExamples(stream, resolution=16, modalities=["boxes"], seed=0, shuffle_buffer=0))
    assert [e["caption"] for e in items] == ["c0", "c1", "c2"] and items[0]["pixel_values"].shape == (3, 16, 16)
