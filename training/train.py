"""Train a GLIGEN grounding adapter on a frozen Stable Diffusion base.

    python -m training.train --config configs/boxes_sd15.yaml                      # 1 CPU or 1 GPU
    python -m training.train --config configs/boxes_sd15.yaml --train.lr 1e-4 --data.resolution 256
    accelerate launch --multi_gpu --num_processes 8 -m training.train --config configs/boxes_sd15.yaml
    python -m training.train --config configs/boxes_sd15.yaml --resume latest       # continue a killed run

The story, top to bottom: config -> frozen SD parts -> adapter -> data -> optimiser -> loop -> save.
Only the adapter learns (GLIGEN, arXiv 2301.07093, Sec. 3); see training/README.md for what the logs mean.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, skip_first_batches
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from tqdm.auto import tqdm

from gligen_ext import ADAPTER_WEIGHTS_NAME, LORA_WEIGHTS_NAME, GroundingEncoders, enable_best_attention

from .checkpoints import (
    CONFIG_NAME,
    TrainingProgress,
    crash_point,
    load_checkpoint,
    register_adapter_only_hooks,
    resolve_resume,
    save_checkpoint,
    save_trained_weights,
)
from .config import Config, flat_config, load_config, save_config
from .data import LayoutExamples, StreamingLayoutExamples, collate_examples, load_records
from .model import inject_adapter, load_frozen_parts, trainable_parameters
from .monitor import bad_row_totals, log_step, mean_over_processes, sample_examples, save_samples
from .records import BadRowCounter
from .step import denoising_loss, example_generators

logger = get_logger(__name__, log_level="INFO")
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, str | None]:
    """``--config FILE [--resume latest|DIR] [--section.key value ...]`` -> (resolved config, resume target)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", required=True, help="YAML file in configs/")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint-<step> folder")
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="fine-tune adapter.init_from through LoRA of this rank (same as --adapter.lora_rank)")
    args, overrides = parser.parse_known_args(argv)
    if args.lora_rank is not None:
        overrides = [*overrides, "--adapter.lora_rank", str(args.lora_rank)]
    return load_config(args.config, overrides), args.resume


def main(argv: Sequence[str] | None = None) -> Path:
    """Run one training; returns the path of the final adapter file."""
    config, resume = parse_args(argv)
    train, out = config.train, Path(config.train.output_dir)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-file checkpoint messages drown the story

    # 1. Accelerate decides devices, processes, precision and accumulation; the launcher (or none) sets them up.
    accelerator = Accelerator(
        mixed_precision=train.mixed_precision,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        log_with=None if config.log.report_to == "none" else config.log.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        # the shuffle order is a function of (seed, epoch), the same on every process and after a resume
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=train.seed),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=train.find_unused_parameters)],
    )
    set_seed(train.seed)  # adapter initialisation is then the same on every process and in every run

    # 2. The frozen Stable Diffusion parts (vae, text encoder(s), tokenizer(s), UNet, noise schedule).
    parts = load_frozen_parts(config.model)

    # 3. The adapter: gated self-attention in every transformer block + one tokenizer per modality.
    inject_adapter(parts, config.adapter)
    # what learns is decided in one place; LoRA fine-tuning (--lora-rank) joins the trainable set there
    params = trainable_parameters(parts.unet, config.adapter.name)
    logger.info("training %d adapter parameters (%s)", sum(p.numel() for p in params.values()),
                ", ".join(config.adapter.modalities))
    if train.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
    # frozen weights in the mixed-precision dtype, trainable ones in fp32 so that the optimiser state is exact
    weight_dtype = DTYPES[train.mixed_precision]
    # SDXL's own VAE overflows in fp16; it stays fp32 unless an fp16-safe VAE was configured
    vae_dtype = torch.float32 if parts.is_sdxl and config.model.vae is None else weight_dtype
    for module, dtype in ((parts.text_encoder, weight_dtype), (parts.text_encoder_2, weight_dtype),
                          (parts.unet, weight_dtype), (parts.vae, vae_dtype)):
        if module is not None:
            module.to(accelerator.device, dtype=dtype)  # also up-casts a base saved in fp16 for an fp32 run
    cast_training_params(parts.unet, dtype=torch.float32)
    logger.info("attention backend: %s", enable_best_attention(parts.unet))

    # 4. Data: map-style examples, accelerate shards each global batch across processes; or a stream, of which
    #    each process reads its own shards.
    records = load_records(config.data.train, split=config.data.split, streaming=config.data.streaming)
    encoders = GroundingEncoders(encode_phrases=parts.phrase_encoder())
    if config.data.cache_dir:
        with accelerator.main_process_first():  # the main process fills the caches, the others then reuse them
            records, encoders = _with_caches(records, parts, config)
    example_options = dict(
        resolution=config.data.resolution,
        modalities=config.adapter.modalities,
        seed=train.seed,
        max_boxes=config.data.max_boxes,
        max_persons=config.data.max_persons,
        min_box_area=config.data.min_box_area,
        flip_prob=config.data.flip_prob,
        random_crop=config.data.random_crop,
    )
    if config.data.streaming:
        examples = StreamingLayoutExamples(records, shuffle_buffer=config.data.shuffle_buffer,
                                           rank=accelerator.process_index, world_size=accelerator.num_processes,
                                           **example_options)
    else:
        examples = LayoutExamples(records, **example_options)
    loader = torch.utils.data.DataLoader(
        examples,
        batch_size=train.batch_size,
        shuffle=not config.data.streaming,
        drop_last=True,
        collate_fn=collate_examples,
        num_workers=config.data.num_workers,
    )

    # 5. Optimiser and LR schedule (GLIGEN: AdamW, lr 5e-5, no weight decay, constant after linear warm-up).
    optimizer = torch.optim.AdamW(
        params.values(),
        lr=train.lr,
        betas=(train.adam_beta1, train.adam_beta2),
        weight_decay=train.weight_decay,
        eps=train.adam_epsilon,
    )
    # stepped once per optimiser step (not prepared), so warm-up counts optimiser steps whatever the process count
    lr_schedule = get_scheduler(
        train.lr_scheduler, optimizer, num_warmup_steps=train.warmup_steps, num_training_steps=train.max_steps
    )
    if config.data.streaming:  # already sharded per process; accelerate would try to broadcast the layout dicts
        unet, optimizer = accelerator.prepare(parts.unet, optimizer)
    else:
        unet, optimizer, loader = accelerator.prepare(parts.unet, optimizer, loader)
    accelerator.register_for_checkpointing(lr_schedule)
    register_adapter_only_hooks(accelerator)

    # 6. Resume: adapter, optimiser, schedule, RNGs and the data position from the newest (or named) checkpoint.
    progress = TrainingProgress()
    checkpoint = resolve_resume(resume, out) if resume else None
    if checkpoint is not None:
        progress = load_checkpoint(accelerator, checkpoint, unet=parts.unet, adapter_name=config.adapter.name)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / CONFIG_NAME)
    accelerator.init_trackers(config.log.project, config=flat_config(config))
    previews = sample_examples(config.data.validation or config.data.train, config=config,
                               count=config.log.sample_count) if config.log.sample_every else []

    # 7. The loop. One pass of the inner loop is one micro-batch; an optimiser step ends every accumulation window.
    logger.info("%s examples, batches of %d per process, %d processes, %d steps",
                "streamed" if config.data.streaming else len(examples), train.batch_size,
                accelerator.num_processes, train.max_steps)
    # bad rows are counted per process since the (re)start; logged totals add those of the resumed checkpoint
    bad_rows, resumed_bad_rows = BadRowCounter(), dict(progress.bad_rows)
    window_loss, window_batches, saved_at = torch.zeros((), device=accelerator.device), 0, None
    bar = tqdm(total=train.max_steps, initial=progress.step, disable=not accelerator.is_local_main_process)
    unet.train()
    while progress.step < train.max_steps:
        examples.set_epoch(progress.epoch)
        if hasattr(loader, "set_epoch"):  # accelerate's prepared loader; a stream is reshuffled by set_epoch above
            loader.set_epoch(progress.epoch)
        batches = skip_first_batches(loader, progress.batches_in_epoch) if progress.batches_in_epoch else loader
        for batch in batches:
            progress.batches_in_epoch += 1
            for reason in batch["bad_rows"]:
                bad_rows.add(reason)
            with accelerator.accumulate(unet):
                loss = _batch_loss(parts, unet, batch, config, encoders, progress, accelerator.device)
                accelerator.backward(loss)
                if accelerator.sync_gradients and train.max_grad_norm:
                    accelerator.clip_grad_norm_(params.values(), train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss, window_batches = window_loss + loss.detach(), window_batches + 1
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:  # an fp16 overflow skips the step; keep the schedule
                lr_schedule.step()
            progress.step += 1
            bar.update(1)

            if progress.step % config.log.every == 0 or progress.step == train.max_steps:
                progress.bad_rows = bad_row_totals(accelerator, bad_rows, resumed_bad_rows)
                mean_loss = mean_over_processes(accelerator, window_loss / window_batches)
                log_step(accelerator, parts.unet, config, progress, mean_loss, lr_schedule.get_last_lr()[0], bar)
                window_loss, window_batches = torch.zeros_like(window_loss), 0
            if config.log.sample_every and progress.step % config.log.sample_every == 0 and previews:
                save_samples(accelerator, parts, config, previews, progress.step)
            if progress.step % train.checkpoint_every == 0 or progress.step == train.max_steps:
                progress.bad_rows = bad_row_totals(accelerator, bad_rows, resumed_bad_rows)
                save_checkpoint(accelerator, unet=parts.unet, adapter_name=config.adapter.name, progress=progress,
                                config=config)
                saved_at = progress.step
            crash_point(f"after-step-{progress.step}")
            if progress.step >= train.max_steps:
                break
        else:
            progress.epoch, progress.batches_in_epoch = progress.epoch + 1, 0
    bar.close()

    # 8. Save: the final adapter (a plain gligen-ext adapter file) and the resolved config beside it.
    if saved_at != progress.step:
        save_checkpoint(accelerator, unet=parts.unet, adapter_name=config.adapter.name, progress=progress,
                        config=config)
    final = out / (LORA_WEIGHTS_NAME if config.adapter.lora_rank else ADAPTER_WEIGHTS_NAME)
    if accelerator.is_main_process:
        save_trained_weights(parts.unet, out, adapter_name=config.adapter.name, base_model=config.model.pretrained)
        logger.info("%s saved to %s", "LoRA" if config.adapter.lora_rank else "adapter", final)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


def _with_caches(records, parts, config: Config):
    """Records with cached VAE latents (when asked) and a phrase encoder reading cached embeddings."""
    from .caching import cache_latents, cache_phrase_embeddings

    if config.data.cache_latents:
        records = cache_latents(records, parts.vae, resolution=config.data.resolution,
                                batch_size=config.train.batch_size, cache_dir=config.data.cache_dir)
    phrases = cache_phrase_embeddings(records, parts.phrase_encoder(), cache_dir=config.data.cache_dir)
    phrases.fallback = parts.phrase_encoder()  # a phrase the table lacks (e.g. spelt differently) is encoded live
    return records, GroundingEncoders(encode_phrases=phrases)


def _batch_loss(parts, unet, batch, config: Config, encoders, progress: TrainingProgress, device) -> torch.Tensor:
    weight = 1.0
    if not batch["captions"]:
        # every row of this batch was bad: a blank example at weight 0 keeps all processes stepping together
        size = config.data.resolution
        batch = {"indices": torch.zeros(1, dtype=torch.long), "pixel_values": torch.zeros(1, 3, size, size),
                 "captions": [""], "layouts": [{}], "bad_rows": []}
        weight = 0.0
    generators = example_generators(config.train.seed, progress.epoch, batch["indices"].tolist())
    loss = denoising_loss(
        parts,
        unet,
        batch,
        adapter_name=config.adapter.name,
        encoders=encoders,
        generators=generators,
        caption_drop=config.train.caption_drop,
        grounding_drop=config.train.grounding_drop,
        resolution=config.data.resolution,
        device=device,
    )
    return loss * weight


if __name__ == "__main__":
    main()
