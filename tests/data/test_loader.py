"""Collation pads images and GT; transformed samples are a function of (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from tunedet.data import (
    DetectionBatch,
    Normalize,
    RandomHorizontalFlip,
    SyntheticShapes,
    TransformedDataset,
    collate_detection,
)


def sample(height, width, boxes, image_id=1):
    return {
        "image": np.full((height, width, 3), 7, np.uint8),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.arange(len(boxes), dtype=np.int64),
        "image_id": image_id,
        "file": f"{image_id}.png",
    }


def test_collate_pads_images_to_the_divisor_and_gt_with_minus_one():
    batch = collate_detection(
        [sample(30, 40, [[1, 2, 3, 4]]), sample(50, 20, [[0, 0, 5, 5], [5, 5, 9, 9]], 2)]
    )
    assert isinstance(batch, DetectionBatch) and len(batch) == 2
    assert batch.images.shape == (2, 3, 64, 64) and batch.images.dtype == torch.float32
    assert (batch.images[0, :, :30, :40] == 7).all()
    assert (batch.images[0, :, 30:, :] == 0).all() and (batch.images[0, :, :, 40:] == 0).all()
    assert batch.image_sizes.tolist() == [[30, 40], [50, 20]]
    assert batch.image_sizes.dtype == torch.long
    assert batch.gt_labels.tolist() == [[0, -1], [0, 1]]
    assert batch.gt_labels.dtype == torch.long
    assert batch.gt_boxes[0].tolist() == [[1, 2, 3, 4], [0, 0, 0, 0]]
    assert batch.metas[1] == {"image_id": 2, "file": "2.png", "scale": 1.0, "orig_size": (50, 20)}


def test_collate_of_background_only_images_keeps_one_padding_slot():
    batch = collate_detection([sample(32, 32, []), sample(32, 32, [])], size_divisor=1)
    assert batch.images.shape == (2, 3, 32, 32)
    assert batch.gt_boxes.shape == (2, 1, 4)
    assert batch.gt_labels.tolist() == [[-1], [-1]]


def test_batch_moves_to_a_device():
    batch = collate_detection([sample(8, 8, [[1, 1, 2, 2]])]).to("cpu")
    assert batch.images.device.type == "cpu" and batch.metas[0]["image_id"] == 1


def test_transformed_dataset_records_orig_size_and_unit_scale():
    ds = TransformedDataset(SyntheticShapes(num_images=4, image_size=64), [Normalize()], seed=0)
    out = ds[0]
    assert out["orig_size"] == (64, 64) and out["scale"] == 1.0
    assert out["image"].shape == (3, 64, 64)
    assert ds.classes == ["circle", "square", "triangle"]
    assert len(ds.coco_ground_truth()["images"]) == 4


def flips_of(ds, keys):
    return [
        bool((ds[k]["image"] != ds.dataset[k if isinstance(k, int) else k[0]]["image"]).any())
        for k in keys
    ]


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    base = SyntheticShapes(num_images=16, image_size=32)
    a = TransformedDataset(base, [RandomHorizontalFlip(p=0.5)], seed=5)
    b = TransformedDataset(base, [RandomHorizontalFlip(p=0.5)], seed=5)
    forward = [a[i]["boxes"].tolist() for i in range(16)]
    backward = [b[i]["boxes"].tolist() for i in reversed(range(16))][::-1]
    assert forward == backward
    a.set_epoch(3)
    assert [a[i]["boxes"].tolist() for i in range(16)] == [
        b[(i, 3)]["boxes"].tolist() for i in range(16)
    ]
    epochs = [flips_of(a, [(i, e) for i in range(16)]) for e in (0, 1)]
    assert epochs[0] != epochs[1]  # a new epoch draws new flips


def test_loader_workers_give_the_same_batches_as_the_main_process():
    ds = TransformedDataset(
        SyntheticShapes(num_images=8, image_size=32), [RandomHorizontalFlip(), Normalize()], seed=1
    )

    def batches(workers):
        loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate_detection)
        return [(b.images, b.gt_boxes) for b in loader]

    for (im0, box0), (im2, box2) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(im0, im2) and torch.equal(box0, box2)
