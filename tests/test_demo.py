"""The shipped shapes-world models: intact, within 40 MB, and ``gligen-ext demo`` draws a layout with them."""

import hashlib
import json

import pytest
from PIL import Image

from gligen_ext.cli import main
from gligen_ext.shapes_world.shipped import ADAPTER_NAMES, WEIGHTS_DIR, read_manifest, shipped_adapters


def test_shipped_files_match_their_manifest_and_fit_in_40_mb():
    manifest = read_manifest()
    files = {**manifest["base"]["files"],
             **{entry["file"]: entry["sha256"] for entry in manifest["adapters"].values()}}
    for relative, digest in files.items():
        assert hashlib.sha256((WEIGHTS_DIR / relative).read_bytes()).hexdigest() == digest, relative
    assert sum((WEIGHTS_DIR / relative).stat().st_size for relative in files) == manifest["total_bytes"] <= 40e6
    assert set(shipped_adapters()) == set(manifest["adapters"]) == set(ADAPTER_NAMES)
    for name, entry in manifest["adapters"].items():  # each records the config and seed that made it
        assert entry["config"]["train"]["output_dir"] == f"runs/shapes_{name}" and entry["seed"] == 0


def test_demo_writes_the_image_its_overlay_and_an_editable_layout(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2:] == [str(tmp_path / "demo.png"), str(tmp_path / "demo_overlay.png")]
    image, overlay = Image.open(tmp_path / "demo.png"), Image.open(tmp_path / "demo_overlay.png")
    assert image.size == (256, 256) and overlay.height == 256 and overlay.width > 256  # depth map beside it
    layout = json.loads((tmp_path / "demo_layout.json").read_text())
    assert {"boxes", "keypoints", "depth"} <= set(layout) and (tmp_path / "demo_depth.png").is_file()

    # the written layout goes back in with the user's own prompt and another adapter
    again = tmp_path / "again"
    args = ["demo", "--out", str(again), "--steps", "2", "--layout", str(tmp_path / "demo_layout.json"),
            "--prompt", "a red circle", "--adapter", "boxes"]
    assert main(args) == 0
    assert "'a red circle'" in capsys.readouterr().out and (again / "demo_overlay.png").is_file()


def test_demo_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--layout", str(tmp_path / "missing.json")]) == 2
    error = capsys.readouterr().err
    assert "missing.json" in error.splitlines()[-1]
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--adapter", "canny"])
    assert exit_info.value.code == 2
