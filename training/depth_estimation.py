"""Depth maps for training records from a ``transformers`` depth-estimation model (DPT, Depth Anything, ...)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class DepthEstimator:
    """``estimator(image) -> "L" image`` of the image's size, near = bright, scaled per image to [0, 255].

    GLIGEN's depth model was trained on MiDaS maps: relative inverse depth, so larger values are nearer. DPT and Depth
    Anything predict that too; for a model that predicts distance (metric depth), pass ``invert=True``."""

    def __init__(self, model: str, *, device: str | int | None = None, invert: bool = False) -> None:
        from transformers import pipeline

        self.pipeline = pipeline("depth-estimation", model=model, device=device)
        self.invert = invert

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        depth = self.pipeline(image)["predicted_depth"].float()
        depth = depth.reshape(-1, *depth.shape[-2:])[:1]
        if tuple(depth.shape[-2:]) != (image.height, image.width):
            depth = torch.nn.functional.interpolate(depth[None], size=(image.height, image.width), mode="bicubic",
                                                    align_corners=False)[0]
        return depth_to_image(depth[0].cpu().numpy(), invert=self.invert)


def depth_to_image(depth: np.ndarray, *, invert: bool = False) -> Image.Image:
    """Min-max scale an (H, W) depth prediction to an 8-bit "L" image; a flat prediction gives all black."""
    low, high = float(np.min(depth)), float(np.max(depth))
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    scaled = 1.0 - scaled if invert else scaled
    return Image.fromarray(np.round(scaled * 255).astype(np.uint8))  # 2-D uint8 -> "L"
