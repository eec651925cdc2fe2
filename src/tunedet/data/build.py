"""Turn validated data config sections into datasets and loaders."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tunedet.config.registry import build
from tunedet.data.loader import TransformedDataset, collate_detection
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
