"""``gligen-ext generate`` on a tiny offline base model: every example layout runs, user errors are one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from gligen_ext import add_grounding_adapter, save_grounding_adapter
from gligen_ext.cli import main
from gligen_ext.pipelines import GroundedStableDiffusionPipeline
from gligen_ext.testing import tiny_sd_components, tiny_unet

EXAMPLES = Path(__file__).resolve().parents[1] / "inference" / "examples"
OPTIONS = ["--base", "--adapter", "--layout", "--prompt", "--out", "--overlay", "--steps", "--seed", "--beta",
           "--guidance", "--width", "--height", "--negative-prompt", "--device", "--dtype"]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny diffusers folder, an adapter for boxes + keypoints + depth and one for boxes only."""
    tmp = tmp_path_factory.mktemp("cli")
    GroundedStableDiffusionPipeline(**tiny_sd_components(tmp / "tok")).save_pretrained(tmp / "base")
    adapters = {}
    for name, modalities in (("multi", ["boxes", "keypoints", "depth"]), ("boxes", ["boxes"])):
        unet = tiny_unet()
        add_grounding_adapter(unet, modalities)
        adapters[name] = str(save_grounding_adapter(unet, tmp / f"{name}.safetensors"))
    return {"base": str(tmp / "base"), **adapters}


def generate(files, out, *extra, base=None, adapter=None, layout=EXAMPLES / "boxes.json"):
    argv = ["generate", "--base", base or files["base"], "--adapter", adapter or files["multi"]]
    argv += ["--layout", str(layout), "--prompt", "a test", "--out", str(out), "--steps", "2", *extra]
    return main(argv)


@pytest.mark.parametrize("example", ["boxes", "keypoints", "depth", "compose"])
def test_every_example_layout_generates_an_image_and_an_overlay(files, tmp_path, capsys, example):
    out = tmp_path / "new" / "folder" / f"{example}.png"
    assert generate(files, out, "--overlay", layout=EXAMPLES / f"{example}.json") == 0
    overlay = out.with_name(f"{example}_overlay.png")
    assert capsys.readouterr().out.split() == [str(out), str(overlay)]
    assert Image.open(out).size == (64, 64)  # the base model's default size: sample_size 32 x vae factor 2
    assert Image.open(overlay).height == 64


def test_several_adapters_beta_per_modality_and_a_pixel_layout(files, tmp_path, capsys):
    layout = tmp_path / "pixels.json"
    layout.write_text(json.dumps({"units": "pixels", "boxes": [{"phrase": "a cup", "box": [8, 8, 40, 56]}]}))
    adapters = ["--adapter", files["boxes"]]
    extra = [*adapters, "--beta", "boxes=0.5, depth=1", "--guidance", "1", "--negative-prompt", "blurry"]
    assert generate(files, tmp_path / "a.jpg", *extra, "--seed", "3", "--width", "64", layout=layout) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "a.jpg")]
    assert Image.open(tmp_path / "a.jpg").size == (64, 64)


@pytest.fixture
def bad_layout(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"boxes": [{"phrase": "an apple", "box": [0.6, 0.1, 0.2, 0.9]}]}))
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("bad layout", "layout.boxes[0].box: x1 (0.20) must be greater than x0 (0.60)"),
        ("missing layout", "nowhere.json' does not exist"),
        ("missing adapter", "adapter file"),
        ("missing local base", "cannot load base model"),
        ("unreachable base hub id", "not a local diffusers folder and not reachable on the Hugging Face hub"),
        ("unreachable adapter hub id", "neither a local file nor reachable on the Hugging Face hub"),
        ("unhandled modality", "depth given, but no loaded grounding adapter handles it"),
        ("beta out of range", "--beta: the value must be a number in [0, 1]"),
        ("beta not a number", "--beta: boxes must be a number"),
        ("beta unknown modality", "--beta: expected a number or modality=value pairs"),
        ("unknown image format", "--out: cannot tell the image format"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(files, tmp_path, capsys, bad_layout, case, expected):
    out = tmp_path / "out.png"
    kwargs, extra = {}, []
    if case == "bad layout":
        kwargs["layout"] = bad_layout
    elif case == "missing layout":
        kwargs["layout"] = tmp_path / "nowhere.json"
    elif case == "missing adapter":
        kwargs["adapter"] = str(tmp_path / "nothing.safetensors")
    elif case == "missing local base":
        kwargs["base"] = str(tmp_path / "no-such-folder")
    elif case == "unreachable base hub id":
        kwargs["base"] = "nobody/no-such-model"
    elif case == "unreachable adapter hub id":
        kwargs["adapter"] = "nobody/no-such-adapter"
    elif case == "unhandled modality":
        kwargs.update(adapter=files["boxes"], layout=EXAMPLES / "depth.json")
    elif case.startswith("beta"):
        extra = ["--beta", {"range": "1.5", "number": "boxes=lots", "modality": "boxes=0.3,sky=0.5"}[case.split()[-1]]]
    else:
        out = tmp_path / "out.unknown"
    assert generate(files, out, *extra, **kwargs) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gligen-ext: error: "), captured.err
    assert expected in lines[0] and "Traceback" not in captured.err
    assert captured.out == "" and not out.exists()


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "generate" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert all(option in text for option in OPTIONS), [o for o in OPTIONS if o not in text]
    for default in ("(default: 30)", "(default: 0)", "(default: 0.3)", "(default: 7.5)", "keypoints", "example"):
        assert default in text


def test_usage_errors_exit_2_and_python_dash_m_works():
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--base", "x"])  # required options missing: argparse's usage error
    assert exit_info.value.code == 2
    result = subprocess.run(
        [sys.executable, "-m", "gligen_ext.cli", "generate", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--adapter" in result.stdout


def test_upscaler_option(files, tmp_path, capsys):
    from PIL import Image

    from gligen_ext.testing import tiny_upscaler

    tiny_upscaler(tmp_path / "tok").save_pretrained(tmp_path / "upscaler")
    out = tmp_path / "up.png"
    code = generate(files, out, "--upscaler", str(tmp_path / "upscaler"), "--overlay")
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == (256, 256) and Image.open(tmp_path / "up_overlay.png").height == 256
