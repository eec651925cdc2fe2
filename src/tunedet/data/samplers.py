"""Batch orders that a resumed run can reproduce exactly."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class EpochBatchSampler:
    """Shuffled batches, a pure function of ``(seed, epoch)``.

    Yields lists of ``(index, epoch)`` keys so that per-sample augmentation can be
    seeded by ``(seed, epoch, index)`` whatever the worker. ``start_batch`` skips
    the first batches of the first epoch (resume mid-epoch without reading them).
    The last incomplete batch is dropped when ``drop_last``.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
        start_epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        if dataset_size == 0:
            raise ValueError("the training dataset is empty")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last and dataset_size >= batch_size
        self.start_epoch = start_epoch
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.dataset_size, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=generator)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, first = self.start_epoch, self.start_batch
        while True:
            order = self.epoch_order(epoch).tolist()
            for b in range(first, self.batches_per_epoch):
                chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
                yield [(i, epoch) for i in chunk]
            epoch, first = epoch + 1, 0
