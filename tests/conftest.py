"""Fixtures shared across the test folders."""

from __future__ import annotations

import pytest

# The demo recipe shrunk to seconds: a tiny network, 64-px images, 2 iterations.
TINY_DEMO_OVERRIDES = (
    "model.backbone.widths=[8, 8, 16, 16, 16]",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "data.train.num_images=8",
    "data.train.image_size=64",
    "data.val.num_images=4",
    "data.val.image_size=64",
    "data.batch_size=2",
    "train.progress=false",
    "train.max_iters=2",
)


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """Configs with ``threads=1`` call torch.set_num_threads; give the next test the
    process's own setting back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_demo() -> list[str]:
    """Overrides that make ``retinanet/demo`` train and evaluate in seconds."""
    return list(TINY_DEMO_OVERRIDES)


def _overfit_stats(model, batch, gt: dict, iters: int, lr: float) -> dict[str, float]:
    import torch

    from tunedet.evaluation import coco_evaluate, detections_to_coco_results

    masks = getattr(model, "needs_masks", False)  # Mask R-CNN: trained and scored on masks
    extra = {"gt_masks": batch.gt_masks} if masks else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(iters):
        losses = model.loss(batch.images, batch.gt_boxes, batch.gt_labels, **extra)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    model.eval()
    predictions = model.predict(batch.images, batch.image_sizes)
    results = detections_to_coco_results(
        predictions,
        [m["image_id"] for m in batch.metas],
        [m["scale"] for m in batch.metas],
        sorted(c["id"] for c in gt["categories"]),
        orig_sizes=[m["orig_size"] for m in batch.metas],
    )
    stats = coco_evaluate(gt, results)
    if masks:
        segm = coco_evaluate(gt, results, iou_type="segm")
        stats.update({f"segm_{name}": value for name, value in segm.items()})
    return stats


@pytest.fixture(scope="session")
def overfit_stats():
    """``overfit_stats(model, batch, gt, iters, lr) -> COCO stats``: train ``model`` on the
    one ``batch`` (AdamW, no weight decay) for ``iters`` steps, then score its predictions
    on that same batch against ``gt`` (the dataset's COCO ground truth): the test that
    targets, losses and decoding agree. A mask detector also gets the batch's masks and
    its stats add the segm ones (``segm_AP50``, ...)."""
    return _overfit_stats
