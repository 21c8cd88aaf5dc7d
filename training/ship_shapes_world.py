"""Copy finished shapes-world runs into the package as fp16 files, with a manifest of how each was made.

    python -m training.ship_shapes_world --base runs/shapes_base          # first the base: adapters train on it
    python -m training.ship_shapes_world --adapter multi=runs/shapes_multi --adapter boxes=runs/shapes_boxes

The base folder is ``train_base``'s ``output_dir`` (its ``model`` is shipped, its ``fidelity.jsonl`` scores are
recorded); each adapter folder is a ``train.py`` ``output_dir``. A new base removes the shipped adapters that are
not given beside it, since they were trained on the old one. Everything lands in
``gligen_ext/shapes_world/weights`` (the demo's models); more than ``--max-mb`` in all is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from gligen_ext.adapters import ADAPTER_WEIGHTS_NAME, METADATA_KEY, write_safetensors
from gligen_ext.shapes_world.shipped import ADAPTER_NAMES, MANIFEST_NAME, WEIGHTS_DIR, read_manifest

from .checkpoints import CONFIG_NAME


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ship_base(run: Path, out: Path) -> dict:
    """Save ``run/model`` in fp16 to ``out/base``; returns its manifest entry."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(run / "model", torch_dtype=torch.float16)
    target = out / "base"
    shutil.rmtree(target, ignore_errors=True)
    pipe.save_pretrained(target, safe_serialization=True)
    configs = base_run_configs(run / "model")
    config = configs[-1]
    scores = run / "fidelity.jsonl"  # absent when the run sampled nothing (log.sample_every 0)
    lines = scores.read_text(encoding="utf-8").splitlines() if scores.is_file() else []
    fidelity = [json.loads(line) for line in lines if line.strip()]
    files = sorted(p for p in target.rglob("*") if p.is_file())
    return {
        "made_by": " && ".join(f"python -m training.train_base --config configs/{Path(c['run']['output_dir']).name}"
                               f".yaml" for c in configs),
        "seed": config["run"]["seed"],
        "steps": {"vae": configs[0]["vae"]["steps"], "diffusion": [c["diffusion"]["steps"] for c in configs]},
        "config": config,
        "continues": configs[:-1],  # the runs whose saved model each next one continued (diffusion.init_from)
        "fidelity": fidelity[-1] if fidelity else None,
        "files": {str(p.relative_to(out)): sha256(p) for p in files},
        "bytes": sum(p.stat().st_size for p in files),
    }


def base_run_configs(model: Path) -> list[dict]:
    """The resolved configs of the train_base runs that made ``model``, first run first: a continuation's
    ``diffusion.init_from`` names the model it continued, whose ``train_base_config.yaml`` is read in turn."""
    configs = [yaml.safe_load((model / "train_base_config.yaml").read_text(encoding="utf-8"))]
    while parent := configs[0]["diffusion"].get("init_from"):
        record = Path(parent) / "train_base_config.yaml"
        if not record.is_file():
            raise SystemExit(f"--base: '{parent}', which this base continues, has no train_base_config.yaml to "
                             f"record; ship from the run folders that made it")
        configs.insert(0, yaml.safe_load(record.read_text(encoding="utf-8")))
    return configs


def ship_adapter(name: str, run: Path, out: Path) -> dict:
    """Write ``run``'s adapter as ``out/adapters/<name>.safetensors`` in fp16; returns its manifest entry."""
    source = run / ADAPTER_WEIGHTS_NAME
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    adapter = json.loads(metadata[METADATA_KEY])
    adapter.update(dtype="float16", base_model="gligen_ext/shapes_world/weights/base")
    path = write_safetensors(out / "adapters" / f"{name}.safetensors", tensors, {METADATA_KEY: json.dumps(adapter)})
    config = yaml.safe_load((run / CONFIG_NAME).read_text(encoding="utf-8"))
    return {
        "made_by": f"python -m training.train --config configs/shapes_{name}.yaml",
        "modalities": config["adapter"]["modalities"],
        "seed": config["train"]["seed"],
        "steps": config["train"]["max_steps"],
        "config": config,
        "file": str(path.relative_to(out)),
        "sha256": sha256(path),
        "bytes": path.stat().st_size,
    }


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="train_base output_dir (holds model/ and fidelity.jsonl); without it the "
                        "shipped base stays and only the given adapters are replaced")
    parser.add_argument("--adapter", action="append", default=[], help="NAME=RUN_DIR, NAME one of " +
                        ", ".join(ADAPTER_NAMES))
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="weights folder (default: the package's)")
    parser.add_argument("--max-mb", type=float, default=40.0, help="size limit of everything shipped, MB")
    args = parser.parse_args(argv)
    out = Path(args.out)
    adapters = dict(spec.split("=", 1) for spec in args.adapter)
    unknown = sorted(set(adapters) - set(ADAPTER_NAMES))
    if unknown:
        raise SystemExit(f"--adapter: {unknown} are not shipped names; use {', '.join(ADAPTER_NAMES)}")
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out) if (out / MANIFEST_NAME).is_file() else {"adapters": {}}
    if args.base:
        manifest["base"] = ship_base(Path(args.base), out)
        for name in sorted(set(manifest["adapters"]) - set(adapters)):  # they were trained on the replaced base
            (out / manifest["adapters"].pop(name)["file"]).unlink(missing_ok=True)
            print(f"removed the {name} adapter: it was trained on the replaced base; train and ship it on this one")
    elif "base" not in manifest:
        raise SystemExit(f"--base: '{out}' has no shipped base yet; give the train_base output_dir")
    manifest["adapters"].update({name: ship_adapter(name, Path(run), out) for name, run in adapters.items()})
    total = manifest["base"]["bytes"] + sum(entry["bytes"] for entry in manifest["adapters"].values())
    manifest["total_bytes"] = total
    if total > args.max_mb * 1e6:
        raise SystemExit(f"{total / 1e6:.1f} MB shipped is over --max-mb {args.max_mb}")
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"{out}: {total / 1e6:.1f} MB (base, adapters: {', '.join(manifest['adapters']) or 'none'})")
    return out


if __name__ == "__main__":
    main()
