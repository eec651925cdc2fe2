"""Batch orders that a resumed run can reproduce exactly.

`EpochBatchSampler` makes each epoch's *global* batches (``batch_size``
samples over all processes) as a pure function of ``(seed, epoch)``, optionally

- with repeat-factor sampling (LVIS, Gupta et al. 2019): image ``i`` is seen
  ``r_i`` times per epoch on average, ``r_i = max_{c in i} max(1, sqrt(t / f_c))``
  with ``f_c`` the fraction of images that contain class ``c`` and ``t`` the
  threshold (`repeat_factors`); the fractional part is rounded stochastically
  each epoch (seeded by ``(seed, epoch)``), so epochs differ in length;
- with aspect-ratio grouping (Detectron's ASPECT_GROUPING): images wider
  than high (group 0) and the others (group 1) go to separate batches; the
  shuffled stream is dealt into one bucket per group and a batch is emitted
  when its bucket is full;

and gives process ``rank`` of ``world_size`` the contiguous slice ``[rank ·
b, (rank + 1) · b)``, ``b = batch_size / world_size``, of every global batch,
so the ranks' batches are disjoint and together are the one-process batch
(a 2-process run sees the same data as the 1-process run at the same global
batch). Every rank draws the same global order (same seed): call it with the
same arguments on every rank.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm


def repeat_factors(image_labels: Sequence[np.ndarray], threshold: float) -> np.ndarray:
    """LVIS repeat factor per image: ``r_i = max(1, max_{c in i} sqrt(t / f_c))``
    (``f_c`` = fraction of images with class ``c``; 1 for images without objects)."""
    n = len(image_labels)
    present = [np.unique(np.asarray(labels, np.int64)) for labels in image_labels]
    counts: dict[int, int] = {}
    for classes in present:
        for c in classes.tolist():
            counts[c] = counts.get(c, 0) + 1
    class_factor = {c: max(1.0, float(np.sqrt(threshold / (k / n)))) for c, k in counts.items()}
    return np.array(
        [max((class_factor[c] for c in classes.tolist()), default=1.0) for classes in present],
        dtype=np.float64,
    )


def aspect_groups(image_sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """Group id per image of size ``(h, w)``: 0 if wider than high, else 1 (Detectron)."""
    sizes = np.asarray(image_sizes, dtype=np.float64).reshape(-1, 2)
    return np.where(sizes[:, 1] > sizes[:, 0], 0, 1).astype(np.int64)


def dataset_sizes_and_labels(dataset) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    """``(h, w)`` and training labels of every item, from the annotations where the
    dataset keeps them (file readers, synthetic shapes), else by reading every item."""
    if hasattr(dataset, "records") and hasattr(dataset, "items"):  # AnnotatedImageDataset
        from tunedet.data.tiling import crop_to_tile

        sizes, labels = [], []
        for record_index, tile, _ in dataset.items:
            rec = dataset.records[record_index]
            if tile is None:
                sizes.append((rec.height, rec.width))
                labels.append(rec.labels[rec.train])
            else:
                x0, y0, x1, y1 = tile
                cut = crop_to_tile(rec.boxes, rec.labels, tile, dataset.min_visible)
                sizes.append((y1 - y0, x1 - x0))
                labels.append(cut.labels[cut.keep & rec.train[cut.index]])
        return sizes, labels
    if hasattr(dataset, "geometry") and hasattr(dataset, "image_size"):  # SyntheticShapes
        side = int(dataset.image_size)
        labels = [dataset.geometry(i)[1] for i in range(len(dataset))]
        return [(side, side)] * len(dataset), labels
    sizes, labels = [], []
    for i in tqdm(range(len(dataset)), desc="reading sizes and labels", leave=False, disable=None):
        sample = dataset[i]
        sizes.append(tuple(int(v) for v in np.shape(sample["image"])[:2]))
        labels.append(np.asarray(sample["labels"], np.int64))
    return sizes, labels


class EpochBatchSampler:
    """Shuffled batches, a pure function of ``(seed, epoch)`` (see the module docstring).

    Yields lists of ``(index, epoch, batch)`` keys (``batch``: the global batch's
    index in its epoch) so that per-sample augmentation is seeded by ``(seed, epoch,
    index)`` and per-batch choices (multi-scale) by ``(seed, epoch, batch)``,
    whatever the worker. ``start_batch`` skips that many global batches from the
    start of ``start_epoch`` (it may run past the end of the epoch: resume by passing
    the number of batches already consumed). The last incomplete global batch of an
    epoch is dropped when ``drop_last`` (always when ``world_size > 1``, so every rank
    yields as many batches, all of ``batch_size / world_size``).

    Args:
        batch_size: the global batch (all ranks); a multiple of ``world_size``.
        group_ids: (N,) group of each item (`aspect_groups`); batches are pure groups.
        repeat_factors: (N,) mean repeats per epoch (`repeat_factors`), each >= 1.
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
        rank: int = 0,
        world_size: int = 1,
        group_ids: Sequence[int] | np.ndarray | None = None,
        repeat_factors: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        if dataset_size == 0:
            raise ValueError("the training dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        for name, values in (("group_ids", group_ids), ("repeat_factors", repeat_factors)):
            if values is not None and len(values) != dataset_size:
                raise ValueError(f"{name} has {len(values)} entries for {dataset_size} items")
        if batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} is not a multiple of world_size {world_size}"
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size // world_size  # per rank
        self.global_batch = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = world_size > 1 or (drop_last and dataset_size >= self.global_batch)
        self.start_epoch = start_epoch
        self.start_batch = start_batch
        self.rank = rank
        self.world_size = world_size
        self.group_ids = None if group_ids is None else np.asarray(group_ids, np.int64)
        self.repeat_factors = (
            None if repeat_factors is None else np.asarray(repeat_factors, np.float64)
        )
        if self.repeat_factors is not None and (self.repeat_factors < 1).any():
            raise ValueError("repeat_factors must all be >= 1")

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in an epoch without repeat factors or grouping (else epoch 0's)."""
        if self.repeat_factors is not None or self.group_ids is not None:
            return len(self.epoch_batches(0))
        full, rest = divmod(self.dataset_size, self.global_batch)
        return full if self.drop_last or rest == 0 else full + 1

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The item indices of one epoch (with repeats), before shuffling."""
        if self.repeat_factors is None:
            return np.arange(self.dataset_size)
        rng = np.random.default_rng([self.seed, epoch, 0x4E9EA7])
        whole = np.floor(self.repeat_factors)
        counts = whole + (rng.random(self.dataset_size) < self.repeat_factors - whole)
        return np.repeat(np.arange(self.dataset_size), counts.astype(np.int64))

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's item indices in the order they are served."""
        indices = torch.from_numpy(self.epoch_indices(epoch))
        if not self.shuffle:
            return indices
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return indices[torch.randperm(len(indices), generator=generator)]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of one epoch."""
        order = self.epoch_order(epoch).tolist()
        size = self.global_batch
        if self.group_ids is None:
            batches = [order[b : b + size] for b in range(0, len(order), size)]
        else:
            buckets: dict[int, list[int]] = {}
            batches = []
            for i in order:
                bucket = buckets.setdefault(int(self.group_ids[i]), [])
                bucket.append(i)
                if len(bucket) == size:
                    batches.append(bucket[:])
                    bucket.clear()
            rest = [i for bucket in buckets.values() for i in bucket]
            batches += [rest[b : b + size] for b in range(0, len(rest), size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        if not batches:
            raise ValueError(
                f"epoch {epoch} has no full batch of {size} samples "
                f"({len(order)} items; lower data.batch_size)"
            )
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        epoch, skip = self.start_epoch, self.start_batch
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        while True:
            batches = self.epoch_batches(epoch)
            for b in range(skip, len(batches)):
                part = batches[b] if self.world_size == 1 else batches[b][lo:hi]
                yield [(i, epoch, b) for i in part]
            skip = max(0, skip - len(batches))
            epoch += 1
