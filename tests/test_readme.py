"""The README's Python example runs as written."""

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 16
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["noise"].sample.shape == (1, 4, 16, 16)
    assert (tmp_path / "boxes_depth.safetensors").is_file()


def test_readme_grounding_summary_matches_the_benchmark_results():
    results = json.loads((README.parent / "benchmarks" / "results" / "grounding.json").read_text())
    settings = {s["name"]: s for s in results["settings"]}
    section = README.read_text().split("## Shapes world", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if re.match(r"\| (base|boxes|keypoints|depth|multi)\b", line)]
    assert len(rows) == 5
    for row in rows:
        label, *numbers = [cell.strip() for cell in row.strip("|").split("|")]
        name = "base" if label.startswith("base") else label.split()[0]
        expected = [settings[name][key] for key in ("box_success", "pck", "depth_iou", "caption_fidelity")]
        assert [float(n) for n in numbers] == [round(v, 2) for v in expected], label
