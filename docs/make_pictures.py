"""Draw the README's layout picture from the example layouts: ``python docs/make_pictures.py``."""

from pathlib import Path

from gligen_ext.viz import draw_layout, image_grid

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "inference" / "examples"

if __name__ == "__main__":
    names = ["boxes", "keypoints", "depth", "compose"]
    pictures = [draw_layout(EXAMPLES / f"{name}.json", width=384, height=384) for name in names]
    grid = image_grid(pictures, cols=4, labels=[f"{name}.json" for name in names])
    out = ROOT / "docs" / "images" / "example_layouts.png"
    grid.save(out)
    print(out.relative_to(ROOT))
