"""A mask detector (``needs_masks = True``) gets ``gt_masks`` from the trainer, the DDP
wrapper, the LR finder and the speed benchmark, and its evaluation adds the COCO segm
stats; a dataset without masks is refused in one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tunedet.engine.build as build_module
from tunedet.config.loader import load_config
from tunedet.deploy.speed import train_step_times
from tunedet.engine.distributed import LossForward
from tunedet.engine.evaluator import evaluate_results
from tunedet.engine.trainer import Trainer
from tunedet.evaluation import COCO_STAT_NAMES

TINY = [
    "data.train.num_images=6",
    "data.train.image_size=64",
    "data.val.num_images=3",
    "data.val.image_size=64",
    "data.batch_size=2",
    "train.progress=false",
    "train.log_every=1",
    "train.max_iters=2",
    "schedule.warmup.iters=1",
    "threads=1",
]
SEGM_KEYS = {f"segm_{name}" for name in COCO_STAT_NAMES}


class RecordingMaskDetector(nn.Module):
    """A test double of a mask detector: one parameter, records what ``loss`` receives;
    ``predict`` returns one box with its mask (the top-left quarter) per image."""

    needs_masks = True

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []

    def loss(self, images, gt_boxes, gt_labels, gt_masks=None):
        self.calls.append(
            {
                "images": images.detach().clone(),
                "gt_boxes": gt_boxes.clone(),
                "gt_labels": gt_labels.clone(),
                "gt_masks": None if gt_masks is None else gt_masks.clone(),
            }
        )
        return {"fit": (self.weight - images.mean().detach()) ** 2}

    def predict(self, images, image_sizes):
        out = []
        for h, w in image_sizes.tolist():
            masks = torch.zeros((1, h, w))
            masks[0, : h // 2, : w // 2] = 1.0
            out.append(
                {
                    "boxes": torch.tensor([[0.0, 0.0, w / 2, h / 2]]),
                    "scores": torch.ones(1),
                    "labels": torch.zeros(1, dtype=torch.long),
                    "masks": masks,
                }
            )
        return out


def tight_box(mask: torch.Tensor) -> list[int]:
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def mask_config(*overrides: str):
    return load_config(
        "retinanet/demo", [*TINY, "data.train.masks=true", "data.val.masks=true", *overrides]
    )


def test_trainer_passes_gt_masks_and_reports_segm_stats(tmp_path: Path, monkeypatch):
    detector = RecordingMaskDetector()
    monkeypatch.setattr(build_module, "build_detector", lambda spec: detector)
    trainer = Trainer(mask_config(), tmp_path, log=lambda *a, **k: None)
    metrics = trainer.train()

    assert len(detector.calls) == 2
    for call in detector.calls:
        masks, boxes, labels = call["gt_masks"], call["gt_boxes"], call["gt_labels"]
        b, m = labels.shape
        assert masks.dtype == torch.uint8
        assert masks.shape == (b, m, *call["images"].shape[-2:])
        for i in range(b):
            for j in range(m):
                if labels[i, j] < 0:  # padded slot
                    assert not masks[i, j].any()
                else:  # the synthetic shape's mask on its (hflipped) box
                    np.testing.assert_allclose(tight_box(masks[i, j]), boxes[i, j], atol=1.0)
    assert set(metrics) == set(COCO_STAT_NAMES) | SEGM_KEYS
    assert 0.0 <= metrics["segm_AP50"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_mask_detector_on_a_dataset_without_masks_is_refused(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(build_module, "build_detector", lambda spec: RecordingMaskDetector())
    with pytest.raises(ValueError) as err:
        Trainer(mask_config("data.train.masks=false"), tmp_path, log=lambda *a, **k: None)
    message = str(err.value)
    assert "\n" not in message
    assert "data.train (synthetic) has none: set data.train.masks=true" in message
    with pytest.raises(ValueError, match="data.val .* set data.val.masks=true"):
        Trainer(mask_config("data.val.masks=false"), tmp_path, log=lambda *a, **k: None)
    with pytest.raises(ValueError, match="eval.sliced merges boxes only"):
        Trainer(mask_config("eval.sliced={tile: 32}"), tmp_path, log=lambda *a, **k: None)


def test_box_detectors_are_trained_and_scored_as_before(tmp_path: Path):
    trainer = Trainer(
        load_config(
            "retinanet/demo",
            [
                *TINY,
                "model.backbone.widths=[8, 8, 16, 16, 16]",
                "model.neck.out_channels=16",
                "model.head.feat_channels=16",
                "model.head.stacked_convs=1",
                "data.train.masks=true",  # masks in the data change nothing for a box model
            ],
        ),
        tmp_path,
        log=lambda *a, **k: None,
    )
    assert not trainer.needs_masks
    assert set(trainer.train()) == set(COCO_STAT_NAMES)


def test_ddp_loss_forward_passes_gt_masks_only_when_given():
    images, boxes = torch.zeros((1, 3, 8, 8)), torch.zeros((1, 1, 4))
    labels, masks = (
        torch.zeros((1, 1), dtype=torch.long),
        torch.ones((1, 1, 8, 8), dtype=torch.uint8),
    )
    detector = RecordingMaskDetector()
    LossForward(detector)(images, boxes, labels, gt_masks=masks)
    assert torch.equal(detector.calls[-1]["gt_masks"], masks)

    class BoxDetector(nn.Module):
        def loss(self, images, gt_boxes, gt_labels):  # no gt_masks argument at all
            return {"zero": images.sum() * 0}

    assert set(LossForward(BoxDetector())(images, boxes, labels)) == {"zero"}


def test_trainer_passes_unpadded_image_sizes_to_a_detector_that_needs_them(tmp_path):
    """A two-stage detector (``needs_image_sizes``) gets the batch's unpadded
    ``image_sizes``; a one-stage detector's ``loss`` is called without them."""
    calls = []

    class SizeDetector(RecordingMaskDetector):
        needs_masks = False
        needs_image_sizes = True

        def loss(self, images, gt_boxes, gt_labels, image_sizes=None):
            calls.append(image_sizes)
            return {"fit": (self.weight - images.mean().detach()) ** 2}

    trainer = Trainer(load_config("retinanet/demo", TINY), tmp_path, log=lambda *a, **k: None)
    batch = next(iter(trainer._train_loader()))
    batch = replace(batch, image_sizes=torch.tensor([[64, 64], [40, 48]]))
    trainer.model = SizeDetector()
    trainer._micro_losses(batch)
    assert len(calls) == 1 and torch.equal(calls[0], torch.tensor([[64, 64], [40, 48]]))

    class BoxOnly(RecordingMaskDetector):
        needs_masks = False

        def loss(self, images, gt_boxes, gt_labels):  # takes no image_sizes
            return {"fit": (self.weight - images.mean().detach()) ** 2}

    trainer.model = BoxOnly()
    assert set(trainer._micro_losses(batch)) == {"fit"}


def test_lr_finder_and_speed_benchmark_pass_gt_masks(monkeypatch):
    import tunedet.models
    from tunedet.analysis.lr_finder import run_lr_finder

    detector = RecordingMaskDetector()
    monkeypatch.setattr(tunedet.models, "build_detector", lambda spec: detector)
    run_lr_finder(mask_config(), start=1e-3, end=1e-1, iters=2, progress=False)
    assert len(detector.calls) == 2
    assert all(c["gt_masks"] is not None and c["gt_masks"].dim() == 4 for c in detector.calls)

    detector.calls.clear()
    images, boxes = torch.zeros((1, 3, 8, 8)), torch.zeros((1, 1, 4))
    labels, masks = (
        torch.zeros((1, 1), dtype=torch.long),
        torch.ones((1, 1, 8, 8), dtype=torch.uint8),
    )
    train_step_times(detector, images, boxes, labels, repeats=1, gt_masks=masks)
    assert len(detector.calls) == 2 and all(
        torch.equal(c["gt_masks"], masks) for c in detector.calls
    )


def test_evaluate_results_adds_segm_stats_to_voc_metrics_too():
    gt = {
        "images": [{"id": 1, "width": 8, "height": 8}],
        "categories": [{"id": 0, "name": "a"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 0,
                "bbox": [0, 0, 4, 4],
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]],
            }
        ],
    }
    result = {"image_id": 1, "category_id": 0, "bbox": [0, 0, 4, 4], "score": 0.9}
    result["segmentation"] = [[5, 5, 7, 5, 7, 7, 5, 7]]  # a right box, the wrong mask
    metrics = evaluate_results(gt, [result], "voc07", segm=True)
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["segm_AP"] == 0.0
    assert set(metrics) == {"mAP", "AP/a"} | SEGM_KEYS
