"""What one benchmark run builds and how hard it measures: SD-1.5 shapes for the real run, tiny ones for --quick."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from gligen_ext.position_net import AdapterTokenizers
from gligen_ext.testing import tiny_sd_components, tiny_unet_config

from .shapes import SD15_UNET, sd15_components

# modalities of each grounded setting; each is loaded as its own adapter under the setting's name
SETTINGS = {
    "boxes": ["boxes"],
    "keypoints": ["keypoints"],
    "depth": ["depth"],
    "all three": ["boxes", "keypoints", "depth"],
}
# a layout of the kind a user writes: three boxes (the tokenizer pads to its 30 slots either way)
LAYOUT = {"boxes": [{"phrase": "a red car", "box": [0.05, 0.5, 0.45, 0.9]},
                    {"phrase": "a dog", "box": [0.55, 0.55, 0.9, 0.95]},
                    {"phrase": "a tall tree", "box": [0.3, 0.05, 0.7, 0.5]}]}
PROMPT = "a red car and a dog under a tall tree"


@dataclass(frozen=True)
class Setup:
    """Model shapes, image sizes and repetitions of a run."""

    name: str
    unet_config: dict
    components: Callable[[str | os.PathLike], dict]  # folder for the tokenizer -> pipeline components
    latent_factor: int  # pixels per latent pixel of the VAE
    step_size: int  # pixels, per-step UNet timings
    generation_size: int  # pixels, whole generations
    train_size: int  # pixels, training steps
    generation_steps: int = 20
    step_batch: int = 2  # per-step UNet timings: the doubled batch of one image with classifier-free guidance
    train_batch: int = 1
    warmup: int = 1
    rounds: int = 3  # per-step and training timings
    generation_rounds: int = 2

    def unet(self, *, seed: int = 0) -> UNet2DConditionModel:
        torch.manual_seed(seed)
        return UNet2DConditionModel(**self.unet_config).eval()


def setup_for(*, quick: bool, device: torch.device) -> Setup:
    """--quick: tiny models, two rounds, seconds in all. Otherwise SD-1.5 shapes; a CPU generates at 256² (a 512²
    generation with CFG takes about nine minutes on two cores), a GPU at 512² with more rounds."""
    if quick:
        return Setup("tiny", tiny_unet_config(), tiny_sd_components, latent_factor=2, step_size=32,
                     generation_size=32, train_size=32, generation_steps=4, warmup=1, rounds=2, generation_rounds=2)
    if device.type == "cuda":
        return Setup("sd15", dict(SD15_UNET), sd15_components, latent_factor=8, step_size=512, generation_size=512,
                     train_size=512, train_batch=4, warmup=3, rounds=10, generation_rounds=3)
    return Setup("sd15", dict(SD15_UNET), sd15_components, latent_factor=8, step_size=512, generation_size=256,
                 train_size=256)


def all_slots_on(adapter: AdapterTokenizers, batch: int, *, device: torch.device | str,
                 dtype: torch.dtype = torch.float32) -> dict[str, dict[str, torch.Tensor]]:
    """Grounding inputs with every token slot in use (masks of ones), the most work a layout can ask for."""
    return {
        modality: {k: torch.ones(v.shape, device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                   for k, v in tokenizer.null_inputs(batch).items()}
        for modality, tokenizer in adapter.tokenizers.items()
    }
