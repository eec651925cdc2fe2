"""Turn validated data config sections into datasets and loaders."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tunedet.config.registry import build
from tunedet.data.annotated_images import load_rgb
from tunedet.data.loader import DetectionBatch, TransformedDataset, collate_detection
from tunedet.data.samplers import (
    EpochBatchSampler,
    aspect_groups,
    dataset_sizes_and_labels,
    repeat_factors,
)


def build_dataset(spec: Any) -> Dataset:
    return build("dataset", spec)


def build_transforms(specs: Sequence[Any]) -> list:
    return [build("transform", spec) for spec in specs]


def build_loader(
    dataset: Dataset,
    transform_specs: Sequence[Any],
    seed: int,
    batch_sampler: Any = None,
    batch_size: int | None = None,
    num_workers: int = 0,
    size_divisor: int = 32,
) -> DataLoader:
    """A DataLoader of `DetectionBatch`; sequential order unless a batch sampler is given.

    The loader draws its workers' base seed from its own generator (seeded by ``seed``),
    never from torch's global one: starting an epoch leaves the global generator (RoI
    sampling, dropout) where a checkpoint restored it, so a resume continues exactly.
    """
    augmented = TransformedDataset(dataset, build_transforms(transform_specs), seed=seed)
    common = dict(
        num_workers=num_workers,
        collate_fn=partial(collate_detection, size_divisor=size_divisor),
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )
    if batch_sampler is not None:
        return DataLoader(augmented, batch_sampler=batch_sampler, **common)
    return DataLoader(augmented, batch_size=batch_size or 1, shuffle=False, **common)


def build_train_sampler(
    data_cfg: Any,
    dataset: Dataset,
    seed: int,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> EpochBatchSampler:
    """The training `EpochBatchSampler` of ``data.sampler``: ``data.batch_size`` per rank,
    global batch ``data.batch_size · world_size``.

    ``start_batch``: global batches already consumed (``iteration · accumulate``), so
    a resumed run continues exactly, whatever the epochs' lengths.
    """
    options = data_cfg.sampler
    groups = factors = None
    if options.aspect_grouping or options.repeat_threshold is not None:
        sizes, labels = dataset_sizes_and_labels(dataset)
        if options.aspect_grouping:
            groups = aspect_groups(sizes)
        if options.repeat_threshold is not None:
            factors = repeat_factors(labels, options.repeat_threshold)
    return EpochBatchSampler(
        len(dataset),
        data_cfg.batch_size * world_size,
        seed=seed,
        shuffle=options.shuffle,
        start_batch=start_batch,
        rank=rank,
        world_size=world_size,
        group_ids=groups,
        repeat_factors=factors,
    )


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def load_images_for_inference(
    paths: Sequence[str], cfg: Any
) -> Iterator[tuple[Path, DetectionBatch, np.ndarray]]:
    """Yield ``(path, one-image batch, original RGB image)`` for files or folders of images."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    transforms = build_transforms(cfg.data.val_transforms)
    for image_id, path in enumerate(files):
        image = load_rgb(path, str(path))
        sample = {
            "image": image,
            "boxes": np.zeros((0, 4), np.float32),
            "labels": np.zeros((0,), np.int64),
            "image_id": image_id,
            "file": str(path),
            "orig_size": image.shape[:2],
            "scale": 1.0,
        }
        rng = np.random.default_rng(0)
        for transform in transforms:
            sample = transform(sample, rng)
        yield path, collate_detection([sample], size_divisor=cfg.data.size_divisor), image
