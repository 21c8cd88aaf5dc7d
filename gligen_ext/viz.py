"""Draw layouts (boxes, COCO keypoints, dense maps, modality fields) over images with OpenCV, for previews and
debugging outputs. A layout field that a modality adds is drawn by its tokenizer's ``draw_layout_field``.

Every function takes PIL images, never modifies its inputs and returns a new RGB image. Layout arguments accept a
:class:`~gligen_ext.layout.Layout` or anything :func:`~gligen_ext.layout.parse_layout` accepts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from .layout import COCO_SKELETON, Layout, LayoutLike, layout_field_owner, parse_layout

# Saturated hues in an order where neighbours contrast, so the first few boxes are easy to tell apart.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128),
)  # fmt: skip
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _as_layout(layout: LayoutLike, width: int, height: int) -> Layout:
    # The image size turns "units": "pixels" layouts into normalised ones.
    return layout if isinstance(layout, Layout) else parse_layout(layout, width=width, height=height)


def _to_array(image: Image.Image) -> np.ndarray:
    return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy, so the input is never touched


def _default_thickness(w: int, h: int) -> int:
    return max(1, round(min(w, h) / 320))


def _default_font_scale(w: int, h: int) -> float:
    return max(0.3, min(w, h) / 800)  # Hershey text below 0.3 is unreadable


def _px(x: float, size: int) -> int:
    return min(max(round(x * size), 0), size - 1)


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    return (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 140 else (255, 255, 255)


def _label(arr: np.ndarray, text: str, x: int, y: int, colour: tuple[int, int, int], scale: float) -> None:
    """Draw ``text`` on a filled ``colour`` background above (x, y), or just below it when there is no room."""
    h, w = arr.shape[:2]
    weight = max(1, round(scale * 1.5))
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, weight)
    pad = max(1, th // 4)
    lh = th + base + 2 * pad
    top = y - lh if y - lh >= 0 else min(y, max(h - lh, 0))
    left = max(min(x, w - tw - 2 * pad), 0)
    cv2.rectangle(arr, (left, top), (left + tw + 2 * pad, top + lh), colour, -1)
    cv2.putText(arr, text, (left + pad, top + pad + th), _FONT, scale, _text_colour(colour), weight, cv2.LINE_AA)


def draw_boxes(
    image: Image.Image, layout: Layout | dict, *, thickness: int | None = None, font_scale: float | None = None
) -> Image.Image:
    """Draw every layout box with its phrase (``"[image]"`` plus a thumbnail for image boxes) in its own colour.

    ``thickness`` and ``font_scale`` default to values that grow with the image, legible from 64 to 1024 pixels."""
    w, h = image.size
    layout = _as_layout(layout, w, h)
    thickness = _default_thickness(w, h) if thickness is None else thickness
    font_scale = _default_font_scale(w, h) if font_scale is None else font_scale
    arr = _to_array(image)
    for i, gbox in enumerate(layout.boxes):
        colour = _PALETTE[i % len(_PALETTE)]
        x0, y0, x1, y1 = _px(gbox.box[0], w), _px(gbox.box[1], h), _px(gbox.box[2], w), _px(gbox.box[3], h)
        cv2.rectangle(arr, (x0, y0), (x1, y1), colour, thickness, cv2.LINE_AA)
        side = (min(x1 - x0, y1 - y0) - 2 * thickness) // 3
        if gbox.image is not None and side >= 8:  # smaller thumbnails show nothing recognisable
            thumb = gbox.image.convert("RGB")
            thumb.thumbnail((side, side), Image.Resampling.BILINEAR)
            tw, th = thumb.size
            tx, ty = x1 - thickness - tw, y1 - thickness - th  # bottom-right, clear of the label at the top-left
            arr[ty : ty + th, tx : tx + tw] = np.asarray(thumb)
        _label(arr, gbox.phrase if gbox.phrase is not None else "[image]", x0, y0, colour, font_scale)
    return Image.fromarray(arr)


def draw_keypoints(
    image: Image.Image, layout: Layout | dict, *, radius: int | None = None, thickness: int | None = None
) -> Image.Image:
    """Draw each person's COCO skeleton in its own colour: limbs between labelled joints (v > 0), filled circles at
    visible joints (v == 2) and hollow ones at occluded joints (v == 1); absent joints (v == 0) are skipped."""
    w, h = image.size
    layout = _as_layout(layout, w, h)
    thickness = _default_thickness(w, h) if thickness is None else thickness
    radius = max(2, round(min(w, h) / 128)) if radius is None else radius
    arr = _to_array(image)
    for i, person in enumerate(layout.keypoints):
        colour = _PALETTE[-1 - i % len(_PALETTE)]  # from the palette's other end, so people differ from boxes
        pts = [(_px(x, w), _px(y, h), int(v)) for x, y, v in person.points.tolist()]
        for a, b in COCO_SKELETON:
            if pts[a][2] > 0 and pts[b][2] > 0:
                cv2.line(arr, pts[a][:2], pts[b][:2], colour, thickness, cv2.LINE_AA)
        for x, y, v in pts:
            if v > 0:
                cv2.circle(arr, (x, y), radius, colour, -1 if v == 2 else max(1, thickness), cv2.LINE_AA)
    return Image.fromarray(arr)


def draw_points(
    image: Image.Image,
    points: Sequence[tuple[tuple[float, float], str]],
    *,
    radius: int | None = None,
    font_scale: float | None = None,
) -> Image.Image:
    """Draw each normalised ``(x, y)`` point as a dot ringed in white, with its label, in its own colour."""
    w, h = image.size
    radius = max(3, round(min(w, h) / 96)) if radius is None else radius
    font_scale = _default_font_scale(w, h) if font_scale is None else font_scale
    arr = _to_array(image)
    for i, ((x, y), label) in enumerate(points):
        colour, centre = _PALETTE[i % len(_PALETTE)], (_px(x, w), _px(y, h))
        cv2.circle(arr, centre, radius, colour, -1, cv2.LINE_AA)
        cv2.circle(arr, centre, radius, (255, 255, 255), max(1, radius // 3), cv2.LINE_AA)  # visible on any colour
        _label(arr, label, centre[0] + radius, centre[1] - radius, colour, font_scale)
    return Image.fromarray(arr)


def _class_colours(ids: np.ndarray) -> np.ndarray:
    # A multiplicative hash gives each id the same colour in every map, whatever other ids are present.
    h = (ids.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    return np.stack([(h >> np.uint64(s)) & np.uint64(255) for s in (56, 48, 40)], axis=-1).astype(np.uint8)


def colorize_map(name: str, value: torch.Tensor, size: tuple[int, int] | None = None) -> Image.Image:
    """Render a (C, H, W) layout map as RGB: depth with the inferno colormap, hed/canny as greyscale, normal as is,
    semantic with a fixed pseudo-random colour per class id; resized to ``size`` = (width, height) if given."""
    arr = value.detach().to("cpu", torch.float32).numpy()
    arr = arr[None] if arr.ndim == 2 else arr
    if name == "semantic":
        ids = np.rint(arr[0]).astype(np.int64)
        uniq, inverse = np.unique(ids, return_inverse=True)
        rgb = _class_colours(uniq)[inverse.reshape(ids.shape)]
    elif arr.shape[0] == 3 and name not in ("depth", "hed", "canny"):
        rgb = (np.clip(arr.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
    else:
        grey = (np.clip(arr.mean(axis=0), 0, 1) * 255).round().astype(np.uint8)
        if name == "depth":
            rgb = cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
        else:
            rgb = np.repeat(grey[..., None], 3, axis=-1)
    if size is not None and size != (rgb.shape[1], rgb.shape[0]):
        # Interpolated class colours would invent classes that are not in the map.
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_NEAREST if name == "semantic" else cv2.INTER_LINEAR)
    return Image.fromarray(np.ascontiguousarray(rgb))


def beside(image: Image.Image, *others: Image.Image, gap: int = 4) -> Image.Image:
    """Place ``others`` to the right of ``image`` in a strip, each scaled to ``image``'s height, with white gaps."""
    h = image.height
    parts = [image.convert("RGB")]
    parts += [o.convert("RGB").resize((max(1, round(o.width * h / o.height)), h)) for o in others]
    out = Image.new("RGB", (sum(p.width for p in parts) + gap * (len(parts) - 1), h), (255, 255, 255))
    x = 0
    for part in parts:
        out.paste(part, (x, 0))
        x += part.width + gap
    return out


def overlay_layout(image: Image.Image, layout: Layout | dict, *, show_maps: bool = True) -> Image.Image:
    """Draw the boxes, keypoints and modality fields on a copy of ``image``; with ``show_maps``, the layout's maps go
    beside it."""
    layout = _as_layout(layout, *image.size)
    drawn = draw_keypoints(draw_boxes(image, layout), layout)
    for key, value in layout.extras.items():
        owner = layout_field_owner(key)
        drawn = owner.draw_layout_field(drawn, value) if owner is not None else drawn
    if not (show_maps and layout.maps):
        return drawn
    h = image.height
    # Colorize at the final size here: beside() would resample semantic maps with blending.
    maps = [colorize_map(n, m, (max(1, round(m.shape[-1] * h / m.shape[-2])), h)) for n, m in layout.maps.items()]
    return beside(drawn, *maps)


def image_grid(
    images: Sequence[Image.Image], *, cols: int | None = None, labels: Sequence[str] | None = None, gap: int = 4
) -> Image.Image:
    """Tile ``images`` row by row (``cols`` defaults to ceil(sqrt(n))) in cells of the first image's size, with
    white gaps; ``labels`` (one per image) are written in a strip under each cell."""
    if not images:
        raise ValueError("image_grid: got no images")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"image_grid: got {len(labels)} labels for {len(images)} images; give one per image")
    cols = math.ceil(math.sqrt(len(images))) if cols is None else cols
    if cols < 1:
        raise ValueError(f"image_grid: cols must be at least 1, got {cols}")
    cols, rows = min(cols, len(images)), math.ceil(len(images) / min(cols, len(images)))
    w, h = images[0].size
    scale = _default_font_scale(w, h)
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, 1)
    strip = th + base + 4 if labels is not None else 0
    canvas = np.full((rows * (h + strip) + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 255, np.uint8)
    for i, img in enumerate(images):
        x, y = (i % cols) * (w + gap), (i // cols) * (h + strip + gap)
        canvas[y : y + h, x : x + w] = np.asarray(img.convert("RGB").resize((w, h)))
        if labels is not None:
            text = str(labels[i])
            while text and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > w - 4:  # trim rather than overflow
                text = text[:-1]
            cv2.putText(canvas, text, (x + 2, y + h + 2 + th), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return Image.fromarray(canvas)


def draw_layout(layout: Layout | dict, *, width: int = 512, height: int = 512) -> Image.Image:
    """Preview a layout on a light grey ``width`` x ``height`` canvas, its maps (if any) faded underneath."""
    layout = _as_layout(layout, width, height)
    canvas = np.full((height, width, 3), 235, np.float32)
    if layout.maps:
        tint = np.mean([np.asarray(colorize_map(n, m, (width, height))) for n, m in layout.maps.items()], axis=0)
        canvas = 0.6 * canvas + 0.4 * tint  # faded so the boxes and skeletons stay readable on top
    return overlay_layout(Image.fromarray(canvas.round().astype(np.uint8)), layout, show_maps=False)
