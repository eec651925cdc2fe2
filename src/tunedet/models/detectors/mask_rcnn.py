"""Mask R-CNN (He et al., 2017): Faster R-CNN with FPN plus an FCN mask head."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.detectors.faster_rcnn import FasterRCNN
from tunedet.models.heads.mask_ops import mask_targets, paste_masks


@register("detector", "mask_rcnn", injected=("backbone", "neck", "rpn", "roi_head", "mask_head"))
class MaskRCNN(FasterRCNN):
    """Mask R-CNN: Faster R-CNN with an FCN mask head on the box head's positive RoIs.

    Training adds ``mask``: the ``mask_head`` (``models/heads/mask_head.py``) predicts
    28×28 logits on the positive RoIs the box head sampled, against their GT masks
    RoIAligned into the same (proposal) boxes (``mask_ops.mask_targets``); BCE on each
    RoI's class channel. ``predict`` runs the mask head on the final detections and
    pastes each detection's class probabilities into its box (``mask_ops.paste_masks``):
    ``masks (K, h, w)`` in [0, 1] over the unpadded input image.
    """

    needs_masks = True  # the trainer passes gt_masks to loss

    default_components = {**FasterRCNN.default_components, "mask_head": {"type": "fcn"}}

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        rpn: nn.Module,
        roi_head: nn.Module,
        mask_head: nn.Module,
        num_classes: Annotated[int, Field(ge=1)],
    ):
        super().__init__(backbone, neck, rpn, roi_head, num_classes)
        self.mask_head = mask_head

    def loss(
        self,
        images: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        gt_masks: Tensor | None = None,
        image_sizes: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """images: (B, 3, H, W); gt_boxes: (B, M, 4) xyxy px; gt_labels: (B, M), -1 padding;
        gt_masks: (B, M, H, W) {0, 1}; image_sizes: (B, 2) (h, w) unpadded, or None
        → Faster R-CNN's four terms and ``"mask"``."""
        if gt_masks is None:
            raise ValueError("mask_rcnn trains on instance masks: the batch has no gt_masks")
        losses, feats, sampled = self.box_losses(images, gt_boxes, gt_labels, image_sizes)
        logits = self.mask_head(feats, sampled.rois)
        targets = mask_targets(
            gt_masks,
            sampled.rois,
            sampled.gt_index,
            self.mask_head.mask_size,
            aligned=self.mask_head.aligned,
        )
        losses["mask"] = self.mask_head.loss(logits, sampled.labels, targets)
        return losses

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W); image_sizes: (B, 2) (h, w) of the unpadded images → per
        image ``boxes (K, 4)``, ``scores (K,)``, ``labels (K,)`` and ``masks (K, h, w)``
        float in [0, 1]."""
        detections, feats = self.detect(images, image_sizes)
        boxes = torch.cat([d["boxes"] for d in detections]).float()
        labels = torch.cat([d["labels"] for d in detections])
        counts = [len(d["boxes"]) for d in detections]
        image = torch.repeat_interleave(
            torch.arange(len(detections), device=boxes.device),
            torch.tensor(counts, device=boxes.device),
        )
        rois = torch.cat([image[:, None].to(boxes.dtype), boxes], dim=1)
        probs = self.mask_head.select(self.mask_head(feats, rois), labels).float().sigmoid()
        for detection, image_probs, size in zip(
            detections, probs.split(counts), image_sizes.tolist(), strict=True
        ):  # one paste per image: each has its own size
            detection["masks"] = paste_masks(image_probs, detection["boxes"], size)
        return detections
