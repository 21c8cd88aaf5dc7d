"""Record dataset builders: COCO instances/captions and keypoints, folder + JSONL, depth folders, a depth model."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gligen_ext.layout import COCO_KEYPOINTS
from training.data import LayoutExamples, collate_examples, load_records
from training.dataset_builders import main
from training.depth_estimation import DepthEstimator, depth_to_image


def write_picture(path, width, height, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def build(argv, capsys):
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "images"
    for i, (width, height) in enumerate([(40, 20), (30, 30), (20, 40), (24, 24)], 1):
        write_picture(images / f"{i:03d}.jpg", width, height, seed=i)
    instances = {
        "images": [{"id": i, "file_name": f"{i:03d}.jpg", "width": w, "height": h}
                   for i, (w, h) in enumerate([(40, 20), (30, 30), (20, 40), (24, 24)], 1)],
        "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 2, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [30, 0, 10.4, 20], "iscrowd": 0},  # overshoots
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 30, 30], "iscrowd": 1},  # crowd only
            {"id": 4, "image_id": 4, "category_id": 1, "bbox": [0, 0, 12, 12], "iscrowd": 0},
        ],
    }
    instances["images"][3]["caption"] = "a brown dog on grass"  # MDETR style: phrases are caption spans
    instances["annotations"][3]["tokens_positive"] = [[2, 7], [8, 11]]
    captions = {"annotations": [{"image_id": 1, "caption": c} for c in ("first caption", "second", "third")]}
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return tmp_path


def test_coco_instances_boxes_phrases_and_captions(coco, capsys):
    argv = ["coco-instances", "--annotations", str(coco / "instances.json"), "--images", str(coco / "images"),
            "--captions", str(coco / "captions.json"), "--out", str(coco / "out")]
    assert "wrote 2 records" in build(argv, capsys)
    records = load_records(coco / "out")
    assert records.column_names == ["image", "caption", "layout"]
    first, mdetr = (json.loads(r) for r in records["layout"])
    assert records[0]["caption"] == "first caption" and records[1]["caption"] == "a brown dog on grass"
    assert [b["phrase"] for b in first["boxes"]] == ["dog", "person"]
    assert first["boxes"][0]["box"] == pytest.approx([0.1, 0.1, 0.6, 0.6])
    assert first["boxes"][1]["box"] == pytest.approx([0.75, 0.0, 1.0, 1.0])  # clipped to the image
    assert mdetr["boxes"][0]["phrase"] == "brown dog" and records[0]["image"].size == (40, 20)

    picks = set()
    for seed in range(6):
        build([*argv[:-1], str(coco / f"seeded{seed}"), "--caption-seed", str(seed)], capsys)
        picks.add(load_records(coco / f"seeded{seed}")[0]["caption"])
    assert picks <= {"first caption", "second", "third"} and len(picks) > 1
    again = build([*argv[:-1], str(coco / "again"), "--caption-seed", "3"], capsys)
    assert "wrote 2" in again and load_records(coco / "again")[0]["caption"] == load_records(coco / "seeded3")[0][
        "caption"]
    batch = collate_examples([LayoutExamples(records, resolution=16, modalities=["boxes"], seed=0)[i] for i in (0, 1)])
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and not batch["bad_rows"]


def test_coco_keypoints_keep_visibility_and_optional_boxes(coco, capsys):
    points = [0.0] * 51
    points[0:3] = [10, 5, 2]  # nose visible
    points[3 * 9 : 3 * 9 + 3] = [20, 10, 1]  # left wrist occluded
    data = {"images": [{"id": 1, "file_name": "001.jpg", "width": 40, "height": 20},
                       {"id": 2, "file_name": "002.jpg", "width": 30, "height": 30}],
            "annotations": [{"id": 1, "image_id": 1, "keypoints": points, "num_keypoints": 2, "bbox": [4, 2, 20, 10]},
                            {"id": 2, "image_id": 2, "keypoints": [0] * 51, "num_keypoints": 0, "bbox": [0, 0, 5, 5]}]}
    (coco / "keypoints.json").write_text(json.dumps(data))
    argv = ["coco-keypoints", "--annotations", str(coco / "keypoints.json"), "--images", str(coco / "images"),
            "--captions", str(coco / "captions.json"), "--with-boxes", "--out", str(coco / "kp")]
    assert "wrote 1 records" in build(argv, capsys)
    record = load_records(coco / "kp")[0]
    layout = json.loads(record["layout"])
    person = np.array(layout["keypoints"][0]["points"])
    assert person.shape == (17, 3) and record["caption"] == "first caption"
    assert person[0] == pytest.approx([0.25, 0.25, 2])
    assert person[COCO_KEYPOINTS.index("left_wrist")] == pytest.approx([0.5, 0.5, 1])
    assert (person[2:, 2] > 0).sum() == 1 and layout["boxes"] == [{"box": [0.1, 0.1, 0.6, 0.6], "phrase": "person"}]


def test_jsonl_pixel_and_normalized_units_maps_and_bad_lines(tmp_path, capsys):
    images = tmp_path / "pics"
    write_picture(images / "a.png", 40, 20)
    write_picture(images / "b.png", 20, 20, seed=1)
    Image.fromarray(np.full((20, 40), 128, np.uint8)).save(images / "a_depth.png")
    lines = [
        {"file_name": "a.png", "caption": "pixels",
         "layout": {"units": "pixels", "boxes": [{"box": [10, 5, 30, 15], "phrase": "cat"}], "depth": "a_depth.png"}},
        {"file_name": "b.png", "caption": "normal", "layout": {"boxes": [{"box": [0, 0, 0.5, 0.5], "phrase": "x"}]}},
        {"file_name": "b.png", "caption": "outside", "layout": {"boxes": [{"box": [0, 0, 1.5, 0.5], "phrase": "x"}]}},
        {"file_name": "missing.png", "caption": "gone", "layout": {"boxes": [{"box": [0, 0, 1, 1], "phrase": "x"}]}},
        {"file_name": "b.png", "caption": "empty", "layout": {}},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{broken\n"
    (tmp_path / "rows.jsonl").write_text(text)
    out = build(["jsonl", "--jsonl", str(tmp_path / "rows.jsonl"), "--images", str(images),
                 "--out", str(tmp_path / "out")], capsys)
    assert "wrote 2 records" in out and "4 bad rows" in out
    for reason in ("layout_outside_image 1", "unreadable_image 1", "empty_layout 1", "bad_layout 1"):
        assert reason in out
    records = load_records(tmp_path / "out")
    assert records.column_names == ["image", "caption", "layout", "depth"]
    assert json.loads(records[0]["layout"])["boxes"][0]["box"] == pytest.approx([0.25, 0.25, 0.75, 0.75])
    assert records[0]["depth"].size == (40, 20) and records[1]["depth"] is None


def tiny_depth_model(folder):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                       image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return str(folder)


def test_depth_folder_rule_and_depth_model(tmp_path, capsys):
    images = tmp_path / "pics"
    write_picture(images / "x.jpg", 36, 24)
    Image.fromarray(np.full((24, 36), 200, np.uint8)).save(images / "x_depth.png")
    write_picture(images / "y.png", 20, 28, seed=1)
    (images / "depth").mkdir()
    Image.fromarray(np.full((28, 20), 50, np.uint8)).save(images / "depth" / "y.png")
    (images / "y.txt").write_text("a caption for y\n")
    write_picture(images / "z.jpg", 30, 20, seed=2)  # no depth map
    out = build(["depth-folder", "--images", str(images), "--out", str(tmp_path / "plain")], capsys)
    assert "wrote 2 records" in out and "empty_layout 1" in out
    records = load_records(tmp_path / "plain")
    assert [np.asarray(d).mean() for d in records["depth"]] == [200, 50] and records[1]["caption"] == "a caption for y"

    model = tiny_depth_model(tmp_path / "dpt")
    out = build(["depth-folder", "--images", str(images), "--depth-model", model, "--out", str(tmp_path / "est")],
                capsys)
    assert "wrote 3 records" in out and "no bad rows" in out
    estimated = load_records(tmp_path / "est")[2]["depth"]
    assert estimated.size == (30, 20) and estimated.mode == "L"
    assert np.asarray(estimated).min() == 0 and np.asarray(estimated).max() == 255  # scaled per image
    direct = DepthEstimator(model)(Image.open(images / "z.jpg"))
    assert np.array_equal(np.asarray(direct), np.asarray(estimated))


def test_depth_to_image_is_near_bright_and_inverts_distances():
    inverse_depth = np.array([[0.5, 2.0], [1.0, 4.0]])  # larger = nearer, as DPT/MiDaS predict
    image = np.asarray(depth_to_image(inverse_depth))
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255
    assert np.array_equal(np.argsort(image, axis=None), np.argsort(inverse_depth, axis=None))
    distance = 1.0 / inverse_depth
    assert np.asarray(depth_to_image(distance, invert=True)).argmax() == 3
    assert np.asarray(depth_to_image(np.ones((2, 2)))).max() == 0


def test_cli_reports_a_bad_annotation_file(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["coco-instances", "--annotations", str(tmp_path / "bad.json"), "--images", str(tmp_path),
                 "--out", str(tmp_path / "out")]) == 2
    assert "instances:" in capsys.readouterr().out


def test_data_md_example_runs(tmp_path, monkeypatch):
    text = (Path(__file__).resolve().parents[1] / "training" / "DATA.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "DATA.md", "exec"), scope)
    batch = scope["batch"]
    assert batch["pixel_values"].shape == (1, 3, 64, 64) and scope["bad_rows"].total == 0
    assert len(batch["layouts"][0]["boxes"]) == 1
