"""The shapes-world grounding benchmark: the quick run end to end through ``gligen-ext eval``, metric aggregation on
hand-made cases, the Fréchet distance, and one-line user errors."""

import json

import numpy as np
import pytest
import torch
from conftest import open_gates, randomize
from PIL import Image

from gligen_ext import add_grounding_adapter, save_grounding_adapter
from gligen_ext.cli import main
from gligen_ext.pipelines import GroundedStableDiffusionPipeline
from gligen_ext.shapes_world import Shape
from gligen_ext.shapes_world.evaluate import HELDOUT_SEED, heldout_scenes, reference_images
from gligen_ext.shapes_world.frechet import VaeLatentFeatures, frechet_distance, local_inception_weights
from gligen_ext.shapes_world.metrics import box_scores
from gligen_ext.shapes_world.report import CELL
from gligen_ext.shapes_world.scenes import BACKGROUND
from gligen_ext.shapes_world.scoring import OBJECT_COUNTS, pooled_success, score_images
from gligen_ext.testing import tiny_sd_components, tiny_unet, tiny_vae

ADAPTERS = {"boxes": ["boxes"], "keypoints": ["keypoints"], "depth": ["depth"]}
ADAPTERS["multi"] = [modality for modalities in ADAPTERS.values() for modality in modalities]
METRICS = ("box_miou", "box_success", "image_success", "pck", "depth_iou", "caption_fidelity")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny diffusers folder and four adapters with random weights and open gates (so that they change images)."""
    tmp = tmp_path_factory.mktemp("eval")
    GroundedStableDiffusionPipeline(**tiny_sd_components(tmp / "tok")).save_pretrained(tmp / "base")
    adapters = {}
    for seed, (name, modalities) in enumerate(ADAPTERS.items()):
        unet = tiny_unet()
        add_grounding_adapter(unet, modalities)
        randomize(unet.position_net, seed=seed)
        open_gates(unet)
        adapters[name] = save_grounding_adapter(unet, tmp / f"{name}.safetensors")
    return {"base": tmp / "base", "adapters": adapters}


def eval_argv(files, *extra, adapters=None):
    adapters = files["adapters"] if adapters is None else adapters
    argv = ["eval", "--base", str(files["base"]), "--quick", "--layouts", "2", "--beta-sweep", "0,1", *extra]
    return argv + [item for name, path in adapters.items() for item in ("--adapter", f"{name}={path}")]


def test_quick_benchmark_runs_end_to_end_through_the_cli(files, tmp_path, capsys):
    out_json, out_md = tmp_path / "results" / "grounding.json", tmp_path / "docs" / "grounding.md"
    picture = tmp_path / "docs" / "images" / "grounding.png"
    argv = eval_argv(files, "--out-json", str(out_json), "--out-md", str(out_md), "--picture", str(picture))
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| setting | β | box mIoU |" in printed and str(out_md) in printed

    results = json.loads(out_json.read_text())
    rows = {row["name"]: row for row in results["settings"]}
    assert list(rows) == ["base", "boxes", "keypoints", "depth", "multi", "multi β=0"]  # β=1 is the multi row
    for row in rows.values():
        assert all(row[m] is None or 0.0 <= row[m] <= 1.0 for m in METRICS), row
        assert row["fid"] >= 0.0 and set(row["by_objects"]) == {str(n) for n in OBJECT_COUNTS}
    # layout 1 holds a stick figure, so PCK is measured on its 17 joints
    assert rows["base"]["pck_joints"] == 17 and rows["base"]["by_objects"]["1"]["layouts"] == 1
    # no grounded step equals the base exactly; grounding at every step changes the images
    assert {k: v for k, v in rows["multi β=0"].items() if k not in ("name", "adapter", "beta")} == {
        k: v for k, v in rows["base"].items() if k not in ("name", "adapter", "beta")
    }
    assert rows["boxes"]["fid"] != rows["base"]["fid"] and rows["multi"]["fid"] != rows["base"]["fid"]
    provenance = results["provenance"]
    assert provenance["layout_seeds"] == [HELDOUT_SEED, HELDOUT_SEED + 1] and provenance["fid_features"] in (
        "vae", "inception")  # fmt: skip
    assert results["options"]["steps"] == 2 and provenance["command"].startswith("gligen-ext eval --base")

    page = out_md.read_text()
    assert "![examples](images/grounding.png)" in page and "--layouts 2 \\" in page
    assert "## Effect of `grounding_beta` (adapter `multi`)" in page and "r = 3 px (4.7% of the 64-pixel side)" in page
    # two example layouts, columns: layout, real scene, base and the four adapters
    assert Image.open(picture).width == 7 * CELL + 6 * 4 and Image.open(picture).height > 2 * CELL


def test_aggregation_is_perfect_on_real_images_and_zero_on_blank_ones():
    scenes = heldout_scenes(24)
    assert [len(scene.items) for scene in scenes[:8]] == [1, 2, 3, 4, 1, 2, 3, 4]
    assert sum(any(not isinstance(item, Shape) for item in scene.items) for scene in scenes) == 8  # every third
    real = score_images([scene.image for scene in scenes], scenes)
    assert real.box_success > 0.95 and real.image_success > 0.9 and real.box_miou > 0.9
    assert real.pck > 0.95 and real.depth_iou > 0.95 and real.caption_fidelity > 0.95
    shapes = sum(isinstance(item, Shape) for scene in scenes for item in scene.items)
    assert sum(real.by_objects[n].boxes for n in OBJECT_COUNTS) == shapes
    assert all(real.by_objects[n].layouts == 6 for n in OBJECT_COUNTS)

    blank = np.full_like(scenes[0].image, BACKGROUND)
    empty = score_images([blank] * len(scenes), scenes)
    assert empty.box_success == empty.image_success == empty.pck == empty.depth_iou == empty.caption_fidelity == 0.0


def test_instance_success_pools_boxes_and_image_success_pools_images():
    one, _, three = heldout_scenes(3)  # 1 and 3 shapes, no figure
    assert all(s["success"] for s in box_scores(one.image, one.layout()))
    blank = np.full_like(one.image, BACKGROUND)
    scores = score_images([one.image, blank], [one, three])
    assert scores.box_success == pytest.approx(1 / 4) and scores.image_success == pytest.approx(1 / 2)
    assert scores.by_objects[1].success == 1.0 and scores.by_objects[3].success == 0.0
    assert scores.by_objects[2].boxes == 0 and scores.by_objects[2].success is None and scores.pck is None
    assert pooled_success(scores.by_objects) == pytest.approx(1 / 4), "1-3 objects: by box, counts with no box skipped"
    assert pooled_success(scores.by_objects, counts=(4,)) is None


def test_frechet_distance_is_zero_for_identical_sets_and_grows_with_a_shift():
    features = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)
    shifts = [frechet_distance(features, features + shift) for shift in (0.1, 0.5, 1.0)]
    # equal covariances: the distance is the squared shift of the mean
    assert shifts == pytest.approx([8 * 0.1**2, 8 * 0.5**2, 8 * 1.0**2])
    a, b = features[:, :1], 3.0 * features[:, 1:2] + 2.0  # one dimension: (m_a - m_b)^2 + (s_a - s_b)^2
    expected = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected)
    assert np.isfinite(frechet_distance(features[:5], features[5:9] * 2))  # fewer samples than dimensions
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(features[:1], features)


def test_vae_substitute_features_are_deterministic_and_tell_real_images_from_noise():
    torch.manual_seed(0)
    features = VaeLatentFeatures(tiny_vae())
    real, other = reference_images(24), np.stack([scene.image for scene in heldout_scenes(24)])
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    assert features(real).shape == (24, 2 * 4 * 4 * 4)
    assert np.array_equal(features(real), features(real))
    assert frechet_distance(features(real), features(other)) < frechet_distance(features(real), features(noise))


@pytest.mark.parametrize(
    "case, expected",
    [
        ("adapter without name", "--adapter: expected NAME=PATH"),
        ("adapter named base", "--adapter: expected NAME=PATH"),
        ("adapter twice", "the name 'boxes' is given twice"),
        ("missing adapter file", "does not exist"),
        ("bad sweep", "--beta-sweep: expected numbers in [0, 1]"),
        ("one layout", "FID needs at least 2"),
        ("unknown sweep adapter", "--sweep-adapter: 'sky' is not an --adapter name"),
        ("markdown suffix", "--out-md: "),
        ("missing base", "cannot load base model"),
        ("inception unavailable", "--fid-features inception"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(files, tmp_path, capsys, case, expected):
    boxes = files["adapters"]["boxes"]
    extra, adapters = [], {"boxes": boxes}
    if case == "inception unavailable" and local_inception_weights() is not None:
        pytest.skip("torch-fidelity and its Inception weights are on this machine")
    argv = eval_argv(files, "--out-md", str(tmp_path / "page.md"), adapters=adapters)
    if case == "adapter without name":
        argv += ["--adapter", str(boxes)]
    elif case == "adapter named base":
        argv += ["--adapter", f"base={boxes}"]
    elif case == "adapter twice":
        argv += ["--adapter", f"boxes={boxes}"]
    elif case == "missing adapter file":
        argv += ["--adapter", f"depth={tmp_path / 'none.safetensors'}"]
    elif case == "bad sweep":
        extra = ["--beta-sweep", "0,2"]
    elif case == "one layout":
        extra = ["--layouts", "1"]
    elif case == "unknown sweep adapter":
        extra = ["--sweep-adapter", "sky"]
    elif case == "markdown suffix":
        extra = ["--out-md", str(tmp_path / "page.txt")]
    elif case == "missing base":
        argv[argv.index("--base") + 1] = str(tmp_path / "no-such-model")
    else:
        extra = ["--fid-features", "inception"]
    assert main(argv + extra) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gligen-ext: error: "), captured.err
    assert expected in lines[0] and captured.out == "" and not list(tmp_path.iterdir())
