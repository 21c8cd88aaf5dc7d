"""Grounded inpainting: regenerate what lies inside the layout's boxes of an input image and keep the rest.

As in GLIGEN's box inpainting, after every denoising step the known region is reset to the input image's latent,
noised to the current timestep, so the new content is generated to fit its surroundings; the decoded result is then
composited onto the input outside the boxes so the kept pixels are exactly the input's.

GLIGEN's inpainting checkpoints (converted with ``gligen-ext convert``, first conv loaded with
``load_conv_in_weights``) use a 9-channel UNet: the noisy latent, the known latent times the keep-mask, and the
keep-mask (1 = keep, 0 = generate, GLIGEN's convention). With such a UNet the pipeline appends those 5 channels to
every UNet input; with an ordinary 4-channel UNet it relies on the reset alone.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..layout import Layout, parse_layouts
from .grounding_mixin import Beta
from .stable_diffusion import GroundedPipelineOutput, GroundedStableDiffusionPipeline


def box_mask(layout: Layout, height: int, width: int) -> torch.Tensor:
    """(1, height, width) float mask: 1 inside any box (to regenerate), 0 elsewhere (to keep)."""
    mask = torch.zeros(1, height, width)
    for item in layout.boxes:
        x0, y0, x1, y1 = item.box
        mask[:, int(y0 * height) : int(np.ceil(y1 * height)), int(x0 * width) : int(np.ceil(x1 * width))] = 1.0
    return mask


class GroundedStableDiffusionInpaintPipeline(GroundedStableDiffusionPipeline):
    """Regenerate the boxes of ``image`` following the layout's phrases (and other modalities); keep the rest.

    Works with an ordinary 4-channel SD UNet and any grounding adapter, or with GLIGEN's 9-channel inpainting UNet.
    """

    def prepare_latents(self, batch_size: int, num_channels_latents: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        # a 9-channel inpainting UNet denoises only the VAE's latent channels; the other 5 are its condition
        return super().prepare_latents(
            batch_size, min(num_channels_latents, self.vae.config.latent_channels), *args, **kwargs
        )

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        *args: Any,
        image: PIL.Image.Image | None = None,
        layout: Any = None,
        grounding_beta: Beta = 1.0,
        return_overlay: bool = False,
        **kwargs: Any,
    ) -> GroundedPipelineOutput | tuple:
        """``image``: the picture to edit (resized to the output size). Boxes in ``layout`` mark what to regenerate.
        GLIGEN inpaints with grounding on for every step, hence ``grounding_beta=1.0``."""
        if image is None:
            raise ValueError("inpainting needs image= (the picture whose boxes are regenerated)")
        default_size = self.unet.config.sample_size * self.vae_scale_factor
        height, width = kwargs.setdefault("height", default_size), kwargs.setdefault("width", default_size)
        layouts = parse_layouts(layout, width=width, height=height)
        if len(layouts) != 1 or not layouts[0].boxes:
            raise ValueError("layout.boxes: inpainting needs at least one box marking the region to regenerate")
        device = self._execution_device
        dtype = self.vae.dtype
        source = self.image_processor.preprocess(image.convert("RGB"), height=height, width=width).to(device, dtype)
        known = self.vae.encode(source).latent_dist.mode() * self.vae.config.scaling_factor
        pixel_mask = box_mask(layouts[0], height, width).to(device)
        latent_mask = F.interpolate(pixel_mask[None], size=known.shape[-2:], mode="nearest")[0]
        keep = 1.0 - latent_mask
        generator = kwargs.get("generator")
        user_callback = kwargs.pop("callback_on_step_end", None)

        def reset_known_region(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            latents = callback_kwargs["latents"]
            timesteps = pipe.scheduler.timesteps
            if step + 1 < len(timesteps):
                # seeded noise, so inpainting is reproducible (diffusers' GLIGEN inpainting is not)
                noise = torch.randn(known.shape, generator=generator, device="cpu", dtype=known.dtype).to(device)
                target = pipe.scheduler.add_noise(known, noise, timesteps[step + 1 : step + 2])
            else:
                target = known
            callback_kwargs["latents"] = target.to(latents.dtype) * keep + latents * (1 - keep)
            return user_callback(pipe, step, timestep, callback_kwargs) if user_callback else callback_kwargs

        kwargs.setdefault("callback_on_step_end_tensor_inputs", ["latents"])
        output_type = kwargs.pop("output_type", "pil")
        condition = torch.cat([known * keep, keep[None].expand(known.shape[0], -1, -1, -1)], dim=1)
        handle = None
        if self.unet.config.in_channels == known.shape[1] + condition.shape[1]:
            handle = self.unet.register_forward_pre_hook(partial(_append_channels, condition), with_kwargs=True)
        elif self.unet.config.in_channels != known.shape[1]:
            raise ValueError(
                f"unet.config.in_channels is {self.unet.config.in_channels}; grounded inpainting takes a "
                f"{known.shape[1]}-channel UNet or GLIGEN's {known.shape[1] + condition.shape[1]}-channel one"
            )
        try:
            result = super().__call__(
                prompt,
                layout=layouts[0],
                grounding_beta=grounding_beta,
                callback_on_step_end=reset_known_region,
                output_type="pt",
                **kwargs,
            )
        finally:
            if handle is not None:
                handle.remove()
        generated = result.images
        composite = source.float().clamp(-1, 1) / 2 + 0.5
        composite = composite * (1 - pixel_mask) + generated.to(composite) * pixel_mask
        images = self.image_processor.postprocess(composite * 2 - 1, output_type=output_type)
        overlays = None
        if return_overlay:
            from ..viz import overlay_layout

            overlays = [
                overlay_layout(picture, layouts[0])
                for picture in self.image_processor.numpy_to_pil(self.image_processor.pt_to_numpy(composite))
            ]
        return GroundedPipelineOutput(images, result.nsfw_content_detected, overlays)


def _append_channels(condition: torch.Tensor, unet: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
    """UNet pre-hook: ``sample`` (B, 4, h, w) -> (B, 9, h, w) with GLIGEN's [masked latent ; keep-mask] channels."""
    sample = args[0] if args else kwargs["sample"]
    extra = condition.to(sample.device, sample.dtype).expand(sample.shape[0], -1, -1, -1)
    sample = torch.cat([sample, extra], dim=1)
    if args:
        return (sample, *args[1:]), kwargs
    return args, kwargs | {"sample": sample}
