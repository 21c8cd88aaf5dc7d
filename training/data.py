"""Training examples from record tables: load, decode, augment, batch.

Every random choice for example ``i`` comes from ``np.random.default_rng([seed, epoch, i])``, so an example is the
same whichever worker, process or resumed run builds it. Bad rows come back as :class:`~training.records.BadRow`
values (never raised), and :func:`collate_examples` drops them from the batch and lists their reasons.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from .augment import augment, plan_crop_flip, transform_layout
from .records import IMAGE_COLUMNS, BadRow, check_modalities, decode_layout, decode_record

_DATA_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
_SAVED_MARKERS = ("state.json", "dataset_dict.json")
VAE_SCALE = 8  # pixels per latent cell of Stable Diffusion's VAE: resolutions must be multiples of it


def load_records(source: str | os.PathLike, *, split: str = "train",
                 streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
    """Open a record table: a folder written by ``save_to_disk``, a parquet/JSONL file or a folder of them, or a
    dataset name for ``datasets.load_dataset``. With ``streaming`` the rows are read lazily (an ``IterableDataset``),
    so the table may be larger than the disk cache."""
    path = Path(source).expanduser()
    if path.is_dir() and any((path / marker).is_file() for marker in _SAVED_MARKERS):
        records = datasets.load_from_disk(str(path))
        if isinstance(records, datasets.DatasetDict):
            if split not in records:
                raise ValueError(f"split: {split!r} is not in '{path}'; it has {list(records)}")
            records = records[split]
        # several shards let split_dataset_by_node and DataLoader workers share the rows out
        return records.to_iterable_dataset(num_shards=max(1, min(64, len(records)))) if streaming else records
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in _DATA_SUFFIXES)
        kinds = {_DATA_SUFFIXES.get(p.suffix) for p in files}
        if not files or None in kinds or len(kinds) > 1:
            raise ValueError(f"source: '{path}' holds no save_to_disk dataset and no single kind of "
                             f"{'/'.join(_DATA_SUFFIXES)} files; give one of those")
        return datasets.load_dataset(kinds.pop(), data_files={split: [str(p) for p in files]}, split=split,
                                     streaming=streaming)
    return datasets.load_dataset(str(source), split=split, streaming=streaming)


def undecoded_images(records: datasets.Dataset | datasets.IterableDataset) -> Any:
    """``records`` with its image and map columns left as stored bytes: :func:`decode_record` decodes them per
    example, where a broken file becomes a bad row and not a crash inside ``datasets``."""
    features = records.features or {}
    for column in IMAGE_COLUMNS:
        if isinstance(features.get(column), datasets.Image) and features[column].decode:
            records = records.cast_column(column, datasets.Image(decode=False))
    return records


class _ExampleBuilder:
    """Turns one record and its stable index into an example dict, or a :class:`BadRow`."""

    def __init__(self, *, resolution: int, modalities: Sequence[str], seed: int, max_boxes: int, max_persons: int,
                 min_box_area: float, flip_prob: float, random_crop: bool) -> None:
        if resolution <= 0 or resolution % VAE_SCALE:
            raise ValueError(f"resolution: {resolution} must be a positive multiple of {VAE_SCALE}")
        self.resolution, self.modalities, self.seed = resolution, check_modalities(modalities), seed
        self.limits = dict(min_box_area=min_box_area, max_boxes=max_boxes, max_persons=max_persons)
        self.flip_prob, self.random_crop = flip_prob, random_crop

    def __call__(self, record: dict[str, Any], index: int, epoch: int) -> dict[str, Any] | BadRow:
        rng = np.random.default_rng([self.seed, epoch, index])
        try:
            if "latents" in record:
                return self._from_latents(record, index, rng)
            image, caption, layout = decode_record(record, modalities=self.modalities)
        except BadRow as bad:
            return bad
        image, layout = augment(image, layout, resolution=self.resolution, rng=rng, random_crop=self.random_crop,
                                flip_prob=self.flip_prob, **self.limits)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
        return {"index": index, "pixel_values": pixels, "caption": caption, "layout": layout}

    def _from_latents(self, record: dict[str, Any], index: int, rng: np.random.Generator) -> dict[str, Any]:
        if record.get("image_size") is None:  # numpy formatting turns a missing latent into NaNs, so ask the size
            raise BadRow("unreadable_image", "image: the latent cache could not read this row's image")
        latents = torch.as_tensor(np.asarray(record["latents"], dtype=np.float32))
        width, height = record["image_size"]
        layout = decode_layout(record, image_size=(width, height), modalities=self.modalities)
        # the cache holds the centre crop, so only the flip stays random
        plan = plan_crop_flip(width, height, rng=rng, random_crop=False, flip_prob=self.flip_prob)
        layout = transform_layout(layout, plan, image_size=(width, height), resolution=self.resolution, **self.limits)
        # mirroring latents stands in for encoding the mirrored image; SD's VAE is close to flip-equivariant
        latents = latents.flip(-1) if plan.flip else latents
        return {"index": index, "latents": latents, "caption": str(record.get("caption") or ""), "layout": layout}


class LayoutExamples(torch.utils.data.Dataset):
    """Map-style training examples over a record ``datasets.Dataset``.

    ``self[i]`` is ``{"index": i, "pixel_values": (3, R, R) float in [-1, 1], "caption": str, "layout": dict}`` (or
    ``"latents": (4, R/8, R/8)`` instead of pixels when ``records`` has a cached ``latents`` column), or a
    :class:`BadRow` for a row that cannot train."""

    def __init__(self, records: datasets.Dataset, *, resolution: int, modalities: Sequence[str], seed: int,
                 epoch: int = 0, max_boxes: int = 30, max_persons: int = 8, min_box_area: float = 0.01,
                 flip_prob: float = 0.5, random_crop: bool = True) -> None:
        self.build = _ExampleBuilder(resolution=resolution, modalities=modalities, seed=seed, max_boxes=max_boxes,
                                     max_persons=max_persons, min_box_area=min_box_area, flip_prob=flip_prob,
                                     random_crop=random_crop)
        records = undecoded_images(records)
        if "latents" in records.column_names:  # the pixels are already encoded; skip reading them
            records = records.remove_columns("image").with_format("numpy", columns=["latents"],
                                                                  output_all_columns=True)
        self.records = records
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | BadRow:
        return self.build(self.records[int(index)], int(index), self.epoch)


class StreamingLayoutExamples(torch.utils.data.IterableDataset):
    """The examples of :class:`LayoutExamples` over a streamed ``datasets.IterableDataset``.

    Rows are shuffled in a buffer of ``shuffle_buffer`` (reseeded by :meth:`set_epoch`) and shared out by
    ``split_dataset_by_node(rank, world_size)``; DataLoader workers split this node's shards further. Example ``k``
    of a worker gets the stable index ``rank + world_size * (worker + num_workers * k)``. :meth:`state_dict` and
    :meth:`load_state_dict` resume mid-epoch (the rows in the shuffle buffer at the checkpoint are lost, as in
    ``datasets``); with workers, use ``torchdata``'s ``StatefulDataLoader``, which calls them in each worker."""

    def __init__(self, records: datasets.IterableDataset, *, resolution: int, modalities: Sequence[str], seed: int,
                 epoch: int = 0, shuffle_buffer: int = 1000, rank: int = 0, world_size: int = 1, max_boxes: int = 30,
                 max_persons: int = 8, min_box_area: float = 0.01, flip_prob: float = 0.5,
                 random_crop: bool = True) -> None:
        super().__init__()
        self.build = _ExampleBuilder(resolution=resolution, modalities=modalities, seed=seed, max_boxes=max_boxes,
                                     max_persons=max_persons, min_box_area=min_box_area, flip_prob=flip_prob,
                                     random_crop=random_crop)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank: {rank} must lie in [0, world_size = {world_size})")
        stream = undecoded_images(records)
        if "latents" in (stream.column_names or []):
            stream = stream.remove_columns("image")
        if world_size > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        self.stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer) if shuffle_buffer > 1 else stream
        self.rank, self.world_size = rank, world_size
        self._yielded, self._resume_from = 0, None
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.stream.set_epoch(epoch)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        resume = self._resume_from
        self._yielded = resume["yielded"] if resume and resume["epoch"] == self.epoch else 0
        for record in self.stream:
            index = self.rank + self.world_size * (worker + num_workers * self._yielded)
            self._yielded += 1
            yield self.build(record, index, self.epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where this iterator stands: the epoch, the examples yielded in it and the stream's own state."""
        return {"epoch": self.epoch, "yielded": self._yielded, "stream": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue after the example at which ``state`` was taken."""
        self.set_epoch(state["epoch"])
        self.stream.load_state_dict(state["stream"])
        self._resume_from = {"epoch": state["epoch"], "yielded": state["yielded"]}


def collate_examples(examples: Sequence[dict[str, Any] | BadRow]) -> dict[str, Any]:
    """Batch examples, dropping bad rows: ``"indices"`` (B,) long, ``"pixel_values"`` (B, 3, R, R) or ``"latents"``
    (B, 4, R/8, R/8), ``"captions"``, ``"layouts"``, and ``"bad_rows"`` (the dropped rows' reasons). A batch of only
    bad rows has B = 0 and no pixel or latent tensor."""
    good = [e for e in examples if not isinstance(e, BadRow)]
    batch: dict[str, Any] = {
        "indices": torch.tensor([e["index"] for e in good], dtype=torch.long),
        "captions": [e["caption"] for e in good],
        "layouts": [e["layout"] for e in good],
        "bad_rows": [e.reason for e in examples if isinstance(e, BadRow)],
    }
    for key in ("pixel_values", "latents"):
        if good and key in good[0]:
            batch[key] = torch.stack([e[key] for e in good])
    return batch
