"""Train a small text-to-image latent diffusion model from scratch and save it as a diffusers pipeline folder.

    python -m training.shapes_world_records --scenes 30000 --out data/shapes_world/train
    python -m training.shapes_world_records --split heldout --scenes 512 --out data/shapes_world/heldout
    python -m training.train_base --config configs/shapes_base.yaml                   # 1 CPU or 1 GPU
    python -m training.train_base --config configs/shapes_base.yaml --resume latest   # continue a stopped run
    python -m training.train_base --config configs/shapes_base.yaml --resume latest --diffusion.steps 12000

The story, top to bottom: config -> data -> stage 1 VAE -> stage 2 text encoder + UNet -> save. The result,
``<output_dir>/model``, is an ordinary Stable Diffusion folder (vae, text_encoder, tokenizer, unet, scheduler) that
``GroundedStableDiffusionPipeline.from_pretrained`` loads; see training/SHAPES_WORLD.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image, ImageOps
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm
from transformers.optimization import get_wsd_schedule

from .base_config import BaseConfig, DiffusionConfig, load_base_config, save_base_config
from .base_loop import EpochBatches, Stage, ema_weights, run_stage, step_generator
from .base_model import (
    assemble_pipeline,
    build_text_encoder,
    build_unet,
    build_vae,
    caption_token_ids,
    copy_init_weights,
    inference_scheduler,
    latent_size,
    load_init_vae,
    noise_scheduler,
    write_word_tokenizer,
)
from .base_monitor import evaluate_pipeline, evaluate_reconstructions, to_pixels
from .checkpoints import list_checkpoints, publish_dir
from .data import load_records, undecoded_images
from .dataclass_io import ConfigError
from .records import BadRow, BadRowCounter, open_image

logger = logging.getLogger(__name__)
VAE_STAGE, DIFFUSION_STAGE = "stage1-vae", "stage2-diffusion"  # checkpoint folders of each stage


def parse_args(argv: Sequence[str] | None = None) -> tuple[BaseConfig, bool]:
    """``--config FILE [--resume latest] [--section.key value ...]`` -> (resolved config, whether to resume)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/shapes_base.yaml")
    parser.add_argument("--resume", choices=["latest"], default=None,
                        help="continue from the newest checkpoint in run.output_dir (a fresh start if none)")
    args, overrides = parser.parse_known_args(argv)
    return load_base_config(args.config, overrides), args.resume is not None


def main(argv: Sequence[str] | None = None) -> Path:
    """Run both stages; returns the saved pipeline folder."""
    config, resume = parse_args(argv)
    out = Path(config.run.output_dir)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    # 1. Accelerate picks the device and precision. The data and noise draws are indexed by step, not sharded,
    #    so one process trains (a GPU, or the CPU's threads).
    accelerator = Accelerator(mixed_precision=config.run.mixed_precision)
    if accelerator.num_processes > 1:
        raise ConfigError("train_base runs in one process; start it with python -m, not a multi-process launcher")
    if not resume and (list_checkpoints(out / VAE_STAGE) or list_checkpoints(out / DIFFUSION_STAGE)):
        raise ConfigError(f"run.output_dir: '{out}' holds checkpoints of an earlier run; continue it with "
                          f"--resume latest or choose another run.output_dir")
    out.mkdir(parents=True, exist_ok=True)
    save_base_config(config, out / "config.yaml")
    config_text = (out / "config.yaml").read_text(encoding="utf-8")

    # 2. Data: the whole table fits in memory at this size (30k scenes of 64x64 are 370 MB of uint8).
    images, captions = load_images(config.data.train, resolution=config.data.resolution)
    heldout_images, heldout_captions = torch.empty(0), []
    if config.data.heldout:
        heldout_images, heldout_captions = load_images(config.data.heldout, resolution=config.data.resolution,
                                                       limit=config.log.eval_count)
    logger.info("%d training images, %d held-out captions", len(images), len(heldout_captions))

    # 3. Stage 1: the autoencoder, then the latent scale that gives the diffusion model unit-variance inputs.
    #    A continuation (diffusion.init_from) keeps the VAE of the model it continues.
    if config.diffusion.init_from:
        vae = load_init_vae(config.diffusion.init_from).to(accelerator.device).eval()
    else:
        vae = train_vae(config, images, heldout_images, heldout_captions, accelerator=accelerator, resume=resume,
                        out=out, config_text=config_text)

    # 4. Stage 2: text encoder and UNet learn together on cached latents, with caption dropout for guidance.
    stage, pipe = train_diffusion(config, vae, images, captions, heldout_captions, accelerator=accelerator,
                                  resume=resume, out=out, config_text=config_text)

    # 5. Save the EMA weights (without EMA, the final ones) as a diffusers folder, beside the config that made them.
    if stage.ema is not None:
        stage.ema.copy_to(stage.parameters())
    final = out / "model"
    staging = out / ".model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    shutil.copy(out / "config.yaml", staging / "train_base_config.yaml")
    publish_dir(staging, final)
    logger.info("pipeline saved to %s", final)
    return final


def diffusion_lr_schedule(recipe: DiffusionConfig, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """Stage 2's schedule: diffusers' ``recipe.lr_scheduler``; with ``decay_steps``, constant_with_warmup whose last
    steps fall to zero, equal to it until then (so a run can be extended, then cooled down)."""
    if recipe.decay_steps:
        return get_wsd_schedule(optimizer, num_warmup_steps=recipe.warmup_steps, num_decay_steps=recipe.decay_steps,
                                num_training_steps=recipe.steps, decay_type="1-sqrt")
    return get_scheduler(recipe.lr_scheduler, optimizer, num_warmup_steps=recipe.warmup_steps,
                         num_training_steps=recipe.steps)


def load_images(source: str, *, resolution: int, limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, R, R) uint8 images (centre-cropped to square, resized) and captions of a record table; unreadable
    rows are skipped and counted."""
    records = undecoded_images(load_records(source)).select_columns(["image", "caption"])
    if limit is not None:
        records = records.select(range(min(limit, len(records))))
    pixels, captions, bad = [], [], BadRowCounter()
    for row in tqdm(records, desc=f"reading {Path(source).name}", unit="image"):
        try:
            image = open_image(row["image"], column="image").convert("RGB")
        except BadRow as error:
            bad.add(error.reason)
            continue
        if image.size != (resolution, resolution):
            image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)
        pixels.append(np.asarray(image))
        captions.append(row["caption"] or "")
    if bad.total:
        logger.warning("%s: %s", source, bad.summary())
    if not pixels:
        raise ValueError(f"data: no readable images in '{source}'")
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous(), captions


def train_vae(config: BaseConfig, images: torch.Tensor, heldout_images: torch.Tensor, heldout_captions: list[str],
              *, accelerator: Accelerator, resume: bool, out: Path, config_text: str) -> AutoencoderKL:
    """Stage 1 (or its saved result ``<out>/vae`` when resuming after it): reconstruction + small KL."""
    final, device, seed = out / "vae", accelerator.device, config.run.seed
    if resume and (final / "config.json").is_file():
        logger.info("stage 1 was finished earlier: %s", final)
        return AutoencoderKL.from_pretrained(final).to(device).eval()
    torch.manual_seed(seed)
    vae = build_vae(config.vae, resolution=config.data.resolution)
    logger.info("stage 1: VAE of %.2fM parameters", sum(p.numel() for p in vae.parameters()) / 1e6)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae.lr, weight_decay=0.0)
    schedule = get_scheduler(config.vae.lr_scheduler, optimizer, num_warmup_steps=config.vae.warmup_steps,
                             num_training_steps=config.vae.steps)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    stage = Stage("vae", out / VAE_STAGE, {"vae": vae}, optimizer, schedule, config.vae.steps,
                  config.run.checkpoint_every, config.run.keep_checkpoints, max_grad_norm=1.0)
    batches = EpochBatches(len(images), config.vae.batch_size, seed=seed, stream=1)

    def loss_fn(step: int) -> torch.Tensor:
        pixels = to_pixels(images[batches(step)]).to(device)
        posterior = vae.encode(pixels).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=step_generator(seed, 1, step)).to(device)
        recon = vae.decode(posterior.mean + posterior.std * noise).sample.float()
        # the KL is summed over each image's latent, as in latent diffusion, and averaged over the batch
        kl = posterior.kl().mean()
        return F.mse_loss(recon, pixels) + config.vae.l1_weight * F.l1_loss(recon, pixels) + config.vae.kl_weight * kl

    def after_step(step: int) -> None:
        if config.log.sample_every and step % config.log.sample_every == 0 and heldout_captions:
            _log_reconstructions(vae, heldout_images, heldout_captions, out=out, step=step, config=config)

    run_stage(stage, loss_fn, accelerator=accelerator, resume=resume, log_every=config.log.every,
              config_text=config_text, after_step=after_step)
    vae = accelerator.unwrap_model(vae).eval()
    with torch.no_grad():
        sample = to_pixels(images[: config.vae.scaling_samples]).to(device)
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in sample.split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    logger.info("latent std %.4f: scaling_factor %.4f", float(means.std()), vae.config.scaling_factor)
    if heldout_captions:
        _log_reconstructions(vae, heldout_images, heldout_captions, out=out, step=config.vae.steps, config=config)
    staging = out / ".vae.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    vae.save_pretrained(staging)
    publish_dir(staging, final)
    return vae


def _log_reconstructions(vae: AutoencoderKL, images: torch.Tensor, captions: list[str], *, out: Path, step: int,
                         config: BaseConfig) -> None:
    path = out / "samples" / f"vae-step-{step:07d}.png"
    scores = evaluate_reconstructions(vae, images, captions, path=path, grid_count=config.log.sample_count)
    logger.info("vae step %d: reconstruction mse %.5f, caption fidelity %.3f, colour fidelity %.3f", step,
                scores["mse"], scores["caption_fidelity"], scores["colour_fidelity"])


def train_diffusion(config: BaseConfig, vae: AutoencoderKL, images: torch.Tensor, captions: list[str],
                    heldout_captions: list[str], *, accelerator: Accelerator, resume: bool, out: Path,
                    config_text: str):
    """Stage 2: returns the stage (models, EMA) and a pipeline of its models."""
    device, seed, recipe = accelerator.device, config.run.seed, config.diffusion
    # every word of the captions is one token; the end token, where CLIP pools, is special and never inside one
    words = sorted({word for caption in captions for word in re.findall(r"[a-z]+", caption.lower())})
    tokenizer = write_word_tokenizer(out / "tokenizer", words, max_length=config.text_encoder.max_length)
    tokens = caption_token_ids(tokenizer, captions)
    empty = caption_token_ids(tokenizer, [""])[0]
    latents = cached_latents(vae, images, path=out / "latents.pt", device=device, reuse=resume)
    torch.manual_seed(seed)
    text_encoder = build_text_encoder(config.text_encoder, tokenizer)
    unet = build_unet(config.unet, latent_size=latent_size(config), latent_channels=vae.config.latent_channels,
                      cross_attention_dim=config.text_encoder.hidden_size)
    if recipe.init_from:
        copy_init_weights(recipe.init_from, tokenizer=tokenizer, text_encoder=text_encoder, unet=unet)
        logger.info("stage 2 continues the text encoder and UNet of %s", recipe.init_from)
    count = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in text_encoder.parameters())
    logger.info("stage 2: UNet + text encoder of %.2fM parameters, vocabulary %d", count / 1e6, len(tokenizer))
    scheduler = noise_scheduler(recipe)
    params = [*text_encoder.parameters(), *unet.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = diffusion_lr_schedule(recipe, optimizer)
    text_encoder, unet, optimizer = accelerator.prepare(text_encoder, unet, optimizer)
    ema = EMAModel(params, decay=recipe.ema_decay, use_ema_warmup=recipe.ema_warmup) if recipe.ema_decay else None
    stage = Stage("diffusion", out / DIFFUSION_STAGE, {"text_encoder": text_encoder, "unet": unet}, optimizer,
                  schedule, recipe.steps, config.run.checkpoint_every, config.run.keep_checkpoints,
                  max_grad_norm=recipe.max_grad_norm, ema=ema)
    batches = EpochBatches(len(latents), recipe.batch_size, seed=seed, stream=2)
    pipe = assemble_pipeline(vae=vae, text_encoder=accelerator.unwrap_model(text_encoder), tokenizer=tokenizer,
                             unet=accelerator.unwrap_model(unet), scheduler=inference_scheduler(scheduler))

    def loss_fn(step: int) -> torch.Tensor:
        chosen, generator = batches(step), step_generator(seed, 2, step)
        clean = latents[chosen]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, recipe.num_train_timesteps, (len(chosen),), generator=generator)
        dropped = torch.rand(len(chosen), generator=generator) < recipe.caption_drop
        ids = torch.where(dropped[:, None], empty, tokens[chosen])
        noisy = scheduler.add_noise(clean, noise, timesteps).to(device)
        hidden = text_encoder(ids.to(device))[0]
        prediction = unet(noisy, timesteps.to(device), hidden).sample
        target = scheduler.get_velocity(clean, noise, timesteps) if recipe.prediction_type == "v_prediction" else noise
        if recipe.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.to(device))
        per_example = (prediction.float() - target.to(device)).pow(2).mean(dim=(1, 2, 3))
        return (per_example * min_snr_weights(scheduler, timesteps, gamma=recipe.snr_gamma,
                                              prediction_type=recipe.prediction_type).to(device)).mean()

    def after_step(step: int) -> None:
        if config.log.sample_every and step % config.log.sample_every == 0 and heldout_captions:
            _evaluate(stage, pipe, heldout_captions, out=out, step=step, config=config)

    run_stage(stage, loss_fn, accelerator=accelerator, resume=resume, log_every=config.log.every,
              config_text=config_text, after_step=after_step)
    if heldout_captions and config.log.sample_every and recipe.steps % config.log.sample_every:
        _evaluate(stage, pipe, heldout_captions, out=out, step=recipe.steps, config=config)
    return stage, pipe


def min_snr_weights(scheduler, timesteps: torch.Tensor, *, gamma: float, prediction_type: str) -> torch.Tensor:
    """(B,) Min-SNR-gamma loss weights (arXiv 2303.09556) for ``timesteps`` (B,): min(SNR, gamma) / SNR for an
    epsilon target, min(SNR, gamma) / (SNR + 1) for a v target (the weights that make both the clipped x0 loss)."""
    alpha_bar = scheduler.alphas_cumprod[timesteps].double()
    snr = alpha_bar / (1 - alpha_bar)
    if prediction_type == "v_prediction":
        return (snr.clamp(max=gamma) / (snr + 1)).float()
    return (gamma / snr).clamp(max=1.0).float()  # also where the SNR underflows to 0


def _evaluate(stage: Stage, pipe, captions: list[str], *, out: Path, step: int, config: BaseConfig) -> None:
    for model in stage.models.values():
        model.eval()
    with ema_weights(stage):
        evaluate_pipeline(pipe, captions, out=out, step=step, steps=config.log.inference_steps,
                          guidance_scale=config.log.guidance_scale, seed=config.run.seed,
                          grid_count=config.log.sample_count)
    for model in stage.models.values():
        model.train()


def cached_latents(vae: AutoencoderKL, images: torch.Tensor, *, path: Path, device: torch.device,
                   reuse: bool) -> torch.Tensor:
    """:func:`encode_latents`, kept in ``path`` so that a resumed run skips the encoding (minutes on a CPU); a file
    made by another VAE (another scaling factor) or for other images is encoded again."""
    key = {"scaling_factor": float(vae.config.scaling_factor), "count": len(images)}
    if reuse and path.is_file():
        stored = torch.load(path, weights_only=True)
        if stored["key"] == key:
            return stored["latents"]
    latents = encode_latents(vae, images, device=device)
    staging = path.with_name(f".{path.name}.tmp")
    torch.save({"key": key, "latents": latents}, staging)
    os.replace(staging, path)
    return latents


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, *, device: torch.device) -> torch.Tensor:
    """(N, C, h, w) scaled posterior means of ``images`` (N, 3, H, W) uint8, on the CPU (indexed per batch)."""
    chunks = [vae.encode(to_pixels(chunk).to(device)).latent_dist.mean.cpu()
              for chunk in tqdm(images.split(256), desc="encoding latents", unit="batch")]
    return torch.cat(chunks) * vae.config.scaling_factor


if __name__ == "__main__":
    main()
