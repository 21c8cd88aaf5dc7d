"""Validators for layout values, shared by :mod:`gligen_ext.layout` and the parsers of layout fields that modalities
add (a tokenizer's ``parse_layout_field``): every problem raises :class:`LayoutError` naming the field's path."""

from __future__ import annotations

import difflib
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

_BOX_NAMES = ("x0", "y0", "x1", "y1")
_TOL = 1e-6


class LayoutError(ValueError):
    """An invalid layout; the message is ``"<field path>: <problem and the fix>"``."""


@dataclass(frozen=True)
class FieldContext:
    """What a layout-field parser needs besides the value: the field's ``path`` for messages (``layout.points``),
    the image ``size`` (W, H) coordinates are given in ((1, 1) when normalised), whether they are ``pixels``, and
    the folder relative file names resolve against (a JSON layout's own folder)."""

    path: str
    size: tuple[float, float] = (1.0, 1.0)
    pixels: bool = False
    base_dir: Path | None = None

    def point(self, value: Any, path: str) -> tuple[float, float]:
        """``[x, y]`` in the layout's units -> normalised (x, y) in [0, 1]."""
        x, y = real_numbers(value, 2, path, "[x, y]")
        return unit_coord(x, self.size[0], path, "x", self.pixels), unit_coord(y, self.size[1], path, "y", self.pixels)

    def box(self, value: Any, path: str) -> tuple[float, float, float, float]:
        """``[x0, y0, x1, y1]`` in the layout's units -> normalised xyxy."""
        return parse_box(value, path, self.size, self.pixels)

    def image(self, value: Any, path: str) -> Image.Image:
        """An image file path (relative to the layout's folder) or a PIL image -> an RGB PIL image."""
        image = read_image(value, path, self.base_dir) if isinstance(value, (str, os.PathLike)) else value
        if not isinstance(image, Image.Image) or 0 in image.size:
            raise LayoutError(f"{path}: expected a non-empty PIL image or an image file path, got {image!r}")
        return image.convert("RGB")


def check_keys(entry: Mapping[Any, Any], allowed: Sequence[str], path: str) -> None:
    """Raise :class:`LayoutError` on the first key of ``entry`` not in ``allowed``, suggesting the closest one."""
    for key in entry:
        if not (isinstance(key, str) and key in allowed):
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise LayoutError(f"{path}: unknown key {key!r}{hint}; allowed keys are {', '.join(map(repr, allowed))}")


def as_list(value: Any, path: str, what: str, n: int | None = None) -> list[Any] | tuple[Any, ...]:
    """``value`` as a list or tuple (of ``n`` items when given); ``what`` names the items in the error."""
    # Arrays and tensors are accepted wherever a (nested) list of numbers is.
    value = value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value
    if not isinstance(value, (list, tuple)):
        raise LayoutError(f"{path}: expected a list of {what}, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise LayoutError(f"{path}: expected {n} {what}, got {len(value)}")
    return value


def real_numbers(value: Any, n: int, path: str, what: str) -> list[float]:
    """``n`` real numbers (booleans refused) as floats."""
    value = as_list(value, path, f"numbers {what}", n)
    for i, v in enumerate(value):
        if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)):
            kind = "a nested list; give a flat list" if isinstance(v, (list, tuple)) else f"{type(v).__name__} {v!r}"
            raise LayoutError(f"{path}[{i}]: expected a number of {what}, got {kind}")
    return [float(v) for v in value]


def unit_coord(raw: float, size: float, path: str, name: str, pixels: bool) -> float:
    """A coordinate in units of ``size`` mapped to [0, 1]; values a rounding error outside are clamped."""
    if not math.isfinite(raw):
        raise LayoutError(f"{path}: {name} is {raw}; coordinates must be finite numbers")
    if -_TOL <= (value := raw / size) <= 1 + _TOL:
        return min(max(value, 0.0), 1.0)
    fix = f"lie in [0, {size:g}] pixels" if pixels else 'lie in [0, 1] (for pixels set "units": "pixels")'
    raise LayoutError(f"{path}: {name} = {raw:g} is outside the image; coordinates must {fix}")


def parse_box(value: Any, path: str, size: tuple[float, float], pixels: bool) -> tuple[float, float, float, float]:
    """``[x0, y0, x1, y1]`` in units of ``size`` (W, H) -> normalised xyxy with x0 < x1 and y0 < y1."""
    coords = real_numbers(value, 4, path, "[x0, y0, x1, y1]")
    x0, y0, x1, y1 = (unit_coord(c, s, path, n, pixels) for c, s, n in zip(coords, size * 2, _BOX_NAMES))
    for low, high, lo, hi in (("x0", "x1", x0, x1), ("y0", "y1", y0, y1)):
        if hi <= lo:
            raise LayoutError(f"{path}: {high} ({hi:.2f}) must be greater than {low} ({lo:.2f})")
    return x0, y0, x1, y1


def read_image(value: str | os.PathLike[str], path: str, base_dir: Path | None) -> Image.Image:
    """Open an image file (relative names resolve against ``base_dir``) and load it fully."""
    file = Path(value).expanduser()
    if base_dir is not None and not file.is_absolute():  # JSON layouts name files relative to themselves
        file = base_dir / file
    if not file.is_file():
        where = f" (looked for '{file}')" if str(file) != str(value) else ""
        raise LayoutError(f"{path}: file '{value}' does not exist{where}")
    try:
        with Image.open(file) as image:
            image.load()
            return image.copy()  # usable after the file handle closes
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise LayoutError(f"{path}: cannot read '{value}' as an image ({exc}); give a PNG or JPEG file") from exc
