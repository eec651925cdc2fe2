"""RetinaNet (Lin et al., 2017): dense anchors, sigmoid focal loss, one shared head."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.postprocess import postprocess_detections

Fraction = Annotated[float, Field(ge=0, le=1)]


@register(
    "detector",
    "retinanet",
    injected=(
        "backbone",
        "neck",
        "head",
        "anchor_generator",
        "assigner",
        "box_coder",
        "cls_loss",
        "box_loss",
    ),
)
class RetinaNet(nn.Module):
    """Backbone → neck → dense head over a grid of anchors, trained with assigned targets.

    The parts are passed in built: ``head(feats) -> (cls_logits (B, A, C), box_deltas
    (B, A, 4))`` in the anchor generator's (level, y, x, anchor) order. Losses:
    ``cls_loss`` (element-wise, e.g. focal) over non-ignored anchors and ``box_loss``
    over positives, both summed and divided by the number of positive anchors in the
    batch; ``box_loss_weight`` scales the box term.
    """

    # sub-specs a config may leave out (the paper's choices; read by config/schema.py)
    default_components = {
        "head": {"type": "retina"},
        "anchor_generator": {"type": "grid"},
        "assigner": {"type": "max_iou", "pos_iou_thr": 0.5, "neg_iou_thr": 0.4},
        "box_coder": {"type": "delta"},
        "cls_loss": {"type": "focal", "alpha": 0.25, "gamma": 2.0},
        "box_loss": {"type": "smooth_l1"},
    }

    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        head: nn.Module,
        anchor_generator,
        assigner,
        box_coder,
        cls_loss: nn.Module,
        box_loss: nn.Module,
        num_classes: Annotated[int, Field(ge=1)],
        box_loss_weight: Annotated[float, Field(ge=0)] = 1.0,
        score_thr: Fraction = 0.05,
        pre_nms_topk: Annotated[int, Field(ge=1)] = 1000,
        nms_iou: Fraction = 0.5,
        max_dets: Annotated[int, Field(ge=1)] = 100,
    ):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.anchor_generator = anchor_generator
        self.assigner = assigner
        self.box_coder = box_coder
        self.cls_loss = cls_loss
        self.box_loss = box_loss
        self.num_classes = num_classes
        self.box_loss_weight = box_loss_weight
        self.score_thr = score_thr
        self.pre_nms_topk = pre_nms_topk
        self.nms_iou = nms_iou
        self.max_dets = max_dets

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """images: (B, 3, H, W) → cls_logits (B, A, C), box_deltas (B, A, 4),
        anchors (A, 4) xyxy px, num_anchors_per_level."""
        feats = self.neck(self.backbone(images))
        cls_logits, box_deltas = self.head(feats)
        levels = self.anchor_generator.grid_anchors(
            [tuple(f.shape[-2:]) for f in feats], device=images.device, dtype=torch.float32
        )
        anchors = torch.cat(levels) if len(levels) > 1 else levels[0]
        return cls_logits, box_deltas, anchors, [len(a) for a in levels]

    def loss(self, images: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """images: (B, 3, H, W); gt_boxes: (B, M, 4) xyxy px; gt_labels: (B, M), -1 padding.

        Returns ``{"cls": focal sum / num_pos, "box": box sum / num_pos · box_loss_weight}``.
        """
        cls_logits, box_deltas, anchors, per_level = self(images)
        cls_logits, box_deltas = cls_logits.float(), box_deltas.float()
        gt_boxes = gt_boxes.to(anchors)
        if gt_labels.shape[1] == 0:  # keep gathers valid; a padded slot never matches
            gt_boxes = gt_boxes.new_zeros(gt_boxes.shape[0], 1, 4)
            gt_labels = gt_labels.new_full((gt_labels.shape[0], 1), -1)

        with torch.no_grad():
            matched = self.assigner.assign(anchors, per_level, gt_boxes, gt_labels).matched
        positive = matched > 0  # (B, A)
        num_pos = positive.sum().clamp(min=1).to(cls_logits.dtype)
        gt_index = (matched - 1).clamp(min=0)  # (B, A)
        target_labels = gt_labels.gather(1, gt_index).clamp(min=0)
        target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))  # (B, A, 4)

        cls_targets = F.one_hot(target_labels, self.num_classes).to(cls_logits.dtype)
        cls_targets = cls_targets * positive[..., None]
        counted = matched >= 0  # ignored anchors (-1) take no classification loss
        cls_term = self.cls_loss(cls_logits[counted], cls_targets[counted]).sum() / num_pos

        pos_anchors = anchors.expand_as(box_deltas)[positive]
        pos_deltas = box_deltas[positive]
        pos_boxes = target_boxes[positive]
        if self.box_loss.on_boxes:
            box_values = self.box_loss(self.box_coder.decode(pos_anchors, pos_deltas), pos_boxes)
        else:
            box_values = self.box_loss(pos_deltas, self.box_coder.encode(pos_anchors, pos_boxes))
        box_term = box_values.sum() / num_pos * self.box_loss_weight
        return {"cls": cls_term, "box": box_term}

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W); image_sizes: (B, 2) (h, w) of the unpadded images →
        per image ``boxes (K, 4)`` xyxy px, ``scores (K,)``, ``labels (K,)``."""
        cls_logits, box_deltas, anchors, per_level = self(images)
        return postprocess_detections(
            cls_logits.float(),
            box_deltas.float(),
            anchors,
            per_level,
            self.box_coder,
            image_sizes,
            score_thr=self.score_thr,
            pre_nms_topk=self.pre_nms_topk,
            nms_iou=self.nms_iou,
            max_dets=self.max_dets,
        )
