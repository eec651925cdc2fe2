"""From samples to padded batches: `TransformedDataset`, `collate_detection`, `DetectionBatch`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import Dataset

from tunedet.data.transforms import Compose

Transform = Callable[[dict, np.random.Generator], dict]


@dataclass
class DetectionBatch:
    """A padded batch (docs/ARCHITECTURE.md, Data).

    images: (B, 3, H, W) float32, zero-padded bottom/right to a size divisor.
    gt_boxes: (B, M, 4) float32 xyxy px of the resized image; M >= 1.
    gt_labels: (B, M) long, -1 marks padding.
    image_sizes: (B, 2) long (h, w) of each unpadded image.
    metas: per image ``{"image_id", "file", "scale", "orig_size": (h, w)}``.
    gt_masks: (B, M, H, W) uint8 instance masks, padded as ``gt_boxes`` (zeros in padded
        slots and padded pixels); None when the samples carry no ``"masks"``.
    """

    images: torch.Tensor
    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    image_sizes: torch.Tensor
    metas: list[dict]
    gt_masks: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DetectionBatch:
        masks = self.gt_masks
        return replace(
            self,
            images=self.images.to(device, non_blocking=non_blocking),
            gt_boxes=self.gt_boxes.to(device, non_blocking=non_blocking),
            gt_labels=self.gt_labels.to(device, non_blocking=non_blocking),
            image_sizes=self.image_sizes.to(device, non_blocking=non_blocking),
            gt_masks=None if masks is None else masks.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> DetectionBatch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return replace(
            self,
            images=self.images.pin_memory(),
            gt_boxes=self.gt_boxes.pin_memory(),
            gt_labels=self.gt_labels.pin_memory(),
            image_sizes=self.image_sizes.pin_memory(),
            gt_masks=None if self.gt_masks is None else self.gt_masks.pin_memory(),
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _chw_float(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.float()
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)


def collate_detection(samples: Sequence[dict], size_divisor: int = 32) -> DetectionBatch:
    """Stack samples into a `DetectionBatch`.

    Images (normalised ``(3, H, W)`` tensors, or raw ``(H, W, 3)`` arrays taken
    as float 0..255) are zero-padded bottom/right to the batch's largest
    height/width rounded up to ``size_divisor``. GT is padded to
    ``M = max(1, max N)`` boxes with label -1 (M >= 1 keeps reductions over
    GT well defined for all-background batches). Samples with ``"masks" (N, h, w)``
    (all or none of them; ``h, w`` of the sample's image) give ``gt_masks (B, M, H, W)
    uint8``, zero in padded slots and pixels.
    """
    if not samples:
        raise ValueError("collate_detection needs at least one sample")
    images = [_chw_float(s["image"]) for s in samples]
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    divisor = max(1, size_divisor)
    pad_h = -(-max(h for h, _ in sizes) // divisor) * divisor
    pad_w = -(-max(w for _, w in sizes) // divisor) * divisor
    batch = images[0].new_zeros((len(images), 3, pad_h, pad_w))
    for i, (image, (h, w)) in enumerate(zip(images, sizes, strict=True)):
        batch[i, :, :h, :w] = image

    counts = [len(s["labels"]) for s in samples]
    m = max(1, *counts)
    gt_boxes = torch.zeros((len(samples), m, 4), dtype=torch.float32)
    gt_labels = torch.full((len(samples), m), -1, dtype=torch.long)
    for i, (sample, n) in enumerate(zip(samples, counts, strict=True)):
        if n:
            gt_boxes[i, :n] = torch.as_tensor(np.asarray(sample["boxes"]), dtype=torch.float32)
            gt_labels[i, :n] = torch.as_tensor(np.asarray(sample["labels"]), dtype=torch.long)
    gt_masks = _collate_masks(samples, sizes, m, (pad_h, pad_w))

    metas = [
        {
            "image_id": s["image_id"],
            "file": s["file"],
            "scale": float(s.get("scale", 1.0)),
            "orig_size": tuple(s.get("orig_size", size)),
        }
        for s, size in zip(samples, sizes, strict=True)
    ]
    return DetectionBatch(
        images=batch,
        gt_boxes=gt_boxes,
        gt_labels=gt_labels,
        image_sizes=torch.tensor(sizes, dtype=torch.long).reshape(-1, 2),
        metas=metas,
        gt_masks=gt_masks,
    )


def _collate_masks(
    samples: Sequence[dict], sizes: list[tuple[int, int]], m: int, padded: tuple[int, int]
) -> torch.Tensor | None:
    """``(B, m, H, W) uint8`` of the samples' ``"masks"``; None when no sample has masks."""
    with_masks = ["masks" in s for s in samples]
    if not any(with_masks):
        return None
    if not all(with_masks):
        first = samples[with_masks.index(False)]["file"]
        raise ValueError(f"{first}: sample without masks in a batch of samples with masks")
    gt_masks = torch.zeros((len(samples), m, *padded), dtype=torch.uint8)
    for i, (sample, (h, w)) in enumerate(zip(samples, sizes, strict=True)):
        masks = torch.as_tensor(np.asarray(sample["masks"], dtype=np.uint8))
        if masks.shape != (len(sample["labels"]), h, w):
            raise ValueError(
                f"{sample['file']}: masks of shape {tuple(masks.shape)} do not match "
                f"{len(sample['labels'])} boxes in a {h}x{w} image"
            )
        gt_masks[i, : masks.shape[0], :h, :w] = masks
    return gt_masks


class TransformedDataset(Dataset):
    """A dataset with transforms whose randomness is a function of ``(seed, epoch, index)``.

    Item ``index`` (or ``(index, epoch)``, or ``(index, epoch, batch)`` as
    `EpochBatchSampler` yields) is ``dataset[index]`` transformed with
    ``rng = np.random.default_rng([seed, epoch, index])``, so augmentation is
    reproducible whatever the worker and order. With plain int keys the epoch
    is the one given to `set_epoch` (DataLoader workers copy the dataset when
    they start: call it before each epoch's iterator is made, or pass
    ``(index, epoch)`` keys). Before the transforms, ``orig_size (h, w)`` and
    ``scale = 1.0`` are added to the sample, with the context keys of
    `tunedet.data.transforms`: ``_fetch`` (raw samples for Mosaic, MixUp,
    copy-paste), ``_num_samples`` and, with a batch index in the key,
    ``_batch_seed = (seed, epoch, batch)`` (one multi-scale size per batch).
    Context keys are removed from the result.
    """

    def __init__(
        self,
        dataset: Dataset,
        transforms: Transform | Sequence[Transform] | None = None,
        seed: int = 0,
    ) -> None:
        self.dataset = dataset
        if transforms is None:
            transforms = []
        self.transforms = Compose(transforms) if isinstance(transforms, Sequence) else transforms
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def raw_sample(self, index: int) -> dict:
        """``dataset[index]`` with ``orig_size`` and ``scale = 1.0`` (no transform)."""
        sample = dict(self.dataset[index])
        sample["orig_size"] = tuple(int(v) for v in np.shape(sample["image"])[:2])
        sample.setdefault("scale", 1.0)
        return sample

    def __getitem__(self, key: int | tuple[int, ...]) -> dict:
        if isinstance(key, tuple):
            index, epoch, *batch = key
        else:
            index, epoch, batch = key, self.epoch, []
        sample = self.raw_sample(index)
        sample["_fetch"] = self.raw_sample
        sample["_num_samples"] = len(self.dataset)
        if batch:
            sample["_batch_seed"] = (self.seed, epoch, batch[0])
        rng = np.random.default_rng([self.seed, epoch, index])
        out = self.transforms(sample, rng)
        return {k: v for k, v in out.items() if not k.startswith("_")}

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes

    @property
    def report(self):
        return self.dataset.report

    def coco_ground_truth(self) -> dict:
        return self.dataset.coco_ground_truth()
