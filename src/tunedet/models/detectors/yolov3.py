"""YOLOv3 (Redmon & Farhadi, 2018) as mmdetection trains it, with Darknet's (2 − w·h) weight.

Backbone (Darknet-53) → YOLOv3 neck → per-level head predicting, for each of three anchors
per cell, ``(tx, ty, tw, th)``, an objectness logit and per-class logits (sigmoid, no
background class). Targets come from the ``grid`` assigner: only anchors of the cell
holding a GT's centre may take it (mmdetection: max-IoU among those, ``mode: max_iou``;
the original one-anchor-per-GT rule: ``mode: yolov3``); anchors whose IoU with a GT
exceeds the ignore threshold but that were not assigned take no objectness loss.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tunedet.assigners.base import AssignResult
from tunedet.boxes.iou import aligned_box_iou
from tunedet.config.registry import register
from tunedet.losses.yolo_box_weight import yolo_box_weight
from tunedet.models.postprocess import postprocess_detections

Fraction = Annotated[float, Field(ge=0, le=1)]
Weight = Annotated[float, Field(ge=0)]


class DecodedBoxes:
    """A "coder" whose deltas already are boxes: lets ``postprocess_detections`` take boxes
    decoded beforehand (the YOLO coder needs per-anchor strides, which it does not pass)."""

    @staticmethod
    def decode(anchors: Tensor, boxes: Tensor) -> Tensor:
        return boxes


def probability_logits(probs: Tensor) -> Tensor:
    """``logit(p)`` so that ``postprocess_detections``' sigmoid gives back ``p`` (0 → −inf)."""
    return torch.logit(probs.clamp(0, 1))


@register(
    "detector",
    "yolov3",
    injected=(
        "backbone",
        "neck",
        "head",
        "anchor_generator",
        "assigner",
        "box_coder",
        "cls_loss",
    ),
)
class YOLOv3(nn.Module):
    """YOLOv3: sigmoid objectness + per-class BCE, grid assignment with an ignore threshold.

    Losses, each summed over the batch and divided by the number of images (mmdetection):

    - ``obj``: BCE of the objectness logit against 1 on positives (or, with
      ``objectness_target: iou``, YOLOv1's IoU of the detached decoded box with its GT)
      and 0 on background; ignored anchors (-1) take none.
    - ``cls``: ``cls_loss`` of the class logits against the one-hot GT class, positives
      only: ``bce`` (the paper's independent sigmoids) or ``softmax_ce`` (softmax over the
      classes, YOLOv1/v2's form; its ``label_smoothing`` gives ``1 − ε`` / ``ε/(C − 1)``
      targets), with ``softmax_ce`` the test-time class probability is the softmax.
    - ``box`` (positives, × ``box_loss_weight``, × ``2 − w·h`` of the GT relative to the
      padded input when ``box_weight_2_minus_wh``): ``xy_bce_wh_l2`` is mmdetection's
      BCE of ``sigmoid(tx, ty)`` against the centre's offset in its cell plus squared error
      of ``(tw, th)`` against ``log(gt / anchor)``; ``giou`` is ``1 − GIoU`` of the decoded box.

    ``predict``: score = ``sigmoid(objectness) · sigmoid(class)`` (objectness below
    ``obj_thr`` dropped), then per-level top-k, threshold and class-wise NMS.
    """

    passes_predictions_to_assigner = False
    passes_loss_to_sampler = False
    passes_strides = True
    background_logit = False
    cls_loss_on_positives_only = True  # a softmax over the classes alone is trainable
    two_stage = False

    default_components = {
        "head": {"type": "yolov3"},
        "anchor_generator": {"type": "yolo"},
        "assigner": {"type": "grid", "pos_iou_thr": 0.5, "neg_iou_thr": 0.5, "min_pos_iou": 0.0},
        "box_coder": {"type": "yolo"},
        "cls_loss": {"type": "bce"},
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
        num_classes: Annotated[int, Field(ge=1)],
        box_regression: Literal["xy_bce_wh_l2", "giou"] = "xy_bce_wh_l2",
        box_weight_2_minus_wh: bool = True,
        objectness_target: Literal["one", "iou"] = "one",
        cls_loss_weight: Weight = 1.0,
        obj_loss_weight: Weight = 1.0,
        box_loss_weight: Weight = 2.0,
        obj_thr: Fraction = 0.005,
        score_thr: Fraction = 0.05,
        pre_nms_topk: Annotated[int, Field(ge=1)] = 1000,
        nms_iou: Fraction = 0.45,
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
        self.num_classes = num_classes
        self.box_regression = box_regression
        self.box_weight_2_minus_wh = box_weight_2_minus_wh
        self.objectness_target = objectness_target
        self.cls_loss_weight = cls_loss_weight
        self.obj_loss_weight = obj_loss_weight
        self.box_loss_weight = box_loss_weight
        self.obj_thr = obj_thr
        self.score_thr = score_thr
        self.pre_nms_topk = pre_nms_topk
        self.nms_iou = nms_iou
        self.max_dets = max_dets

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, list[int]]:
        """images (B, 3, H, W) → cls_logits (B, A, C), box_deltas (B, A, 4), obj_logits
        (B, A), anchors (A, 4) xyxy px, num_anchors_per_level."""
        feats = self.neck(self.backbone(images))
        cls_logits, box_deltas, obj_logits = self.head(feats)
        levels = self.anchor_generator.grid_anchors(
            [tuple(f.shape[-2:]) for f in feats], device=images.device, dtype=torch.float32
        )
        anchors = torch.cat(levels) if len(levels) > 1 else levels[0]
        return cls_logits, box_deltas, obj_logits, anchors, [len(a) for a in levels]

    def anchor_strides(self, anchors: Tensor, num_anchors_per_level: list[int]) -> Tensor:
        """(A,) the stride of each anchor's level."""
        strides = torch.tensor(
            self.anchor_generator.strides, dtype=anchors.dtype, device=anchors.device
        )
        counts = torch.tensor(num_anchors_per_level, device=anchors.device)
        return strides.repeat_interleave(counts)

    def assign_targets(
        self, anchors: Tensor, num_anchors_per_level: list[int], gt_boxes: Tensor, gt_labels: Tensor
    ) -> AssignResult:
        with torch.no_grad():
            return self.assigner.assign(anchors, num_anchors_per_level, gt_boxes, gt_labels)

    def loss(self, images: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """images: (B, 3, H, W); gt_boxes: (B, M, 4) xyxy px; gt_labels: (B, M), -1 padding.

        Returns ``{"cls", "obj", "box"}``, each a sum over the batch / B (see the class).
        """
        cls_logits, box_deltas, obj_logits, anchors, per_level = self(images)
        cls_logits, box_deltas, obj_logits = (
            cls_logits.float(),
            box_deltas.float(),
            obj_logits.float(),
        )
        num_images = images.shape[0]
        gt_boxes = gt_boxes.to(anchors)
        if gt_labels.shape[1] == 0:
            gt_boxes = gt_boxes.new_zeros(num_images, 1, 4)
            gt_labels = gt_labels.new_full((num_images, 1), -1)
        matched = self.assign_targets(anchors, per_level, gt_boxes, gt_labels).matched
        positive = matched > 0
        image_index, anchor_index = positive.nonzero(as_tuple=True)
        gt_index = matched[image_index, anchor_index] - 1
        pos_gt = gt_boxes[image_index, gt_index]  # (P, 4)
        pos_labels = gt_labels[image_index, gt_index]
        pos_anchors = anchors[anchor_index]
        pos_strides = self.anchor_strides(anchors, per_level)[anchor_index]
        pos_deltas = box_deltas[image_index, anchor_index]

        weight = torch.ones_like(pos_strides)
        if self.box_weight_2_minus_wh:
            weight = yolo_box_weight(pos_gt, tuple(images.shape[-2:]))
        if self.box_regression == "giou":
            pred = self.box_coder.decode(pos_anchors, pos_deltas, pos_strides)
            box_values = 1 - aligned_box_iou(pred, pos_gt, "giou")
        else:
            target = self.box_coder.encode(pos_anchors, pos_gt, pos_strides, logits=False)
            xy = F.binary_cross_entropy_with_logits(
                pos_deltas[:, :2], target[:, :2].clamp(0, 1), reduction="none"
            ).sum(dim=1)
            wh = (pos_deltas[:, 2:] - target[:, 2:]).square().sum(dim=1)
            box_values = xy + wh
        box_term = (weight * box_values).sum() / num_images * self.box_loss_weight

        obj_target = positive.to(obj_logits.dtype)
        if self.objectness_target == "iou":
            with torch.no_grad():
                decoded = self.box_coder.decode(pos_anchors, pos_deltas.detach(), pos_strides)
                iou = aligned_box_iou(decoded, pos_gt).clamp(min=0).to(obj_target.dtype)
            obj_target = obj_target.index_put((image_index, anchor_index), iou)
        obj_values = F.binary_cross_entropy_with_logits(obj_logits, obj_target, reduction="none")
        obj_term = torch.where(matched >= 0, obj_values, 0.0).sum() / num_images

        cls_target = F.one_hot(pos_labels, self.num_classes).to(cls_logits.dtype)
        cls_values = self.cls_loss(cls_logits[image_index, anchor_index], cls_target).sum()
        return {
            "cls": cls_values / num_images * self.cls_loss_weight,
            "obj": obj_term * self.obj_loss_weight,
            "box": box_term,
        }

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W); image_sizes: (B, 2) (h, w) of the unpadded images →
        per image ``boxes (K, 4)`` xyxy px, ``scores (K,)``, ``labels (K,)``."""
        cls_logits, box_deltas, obj_logits, anchors, per_level = self(images)
        objectness = obj_logits.float().sigmoid()
        objectness = torch.where(objectness >= self.obj_thr, objectness, 0.0)
        if getattr(self.cls_loss, "needs_background_logit", False):  # softmax_ce
            scores = objectness[..., None] * cls_logits.float().softmax(dim=-1)
        else:
            scores = objectness[..., None] * cls_logits.float().sigmoid()
        strides = self.anchor_strides(anchors, per_level)
        boxes = self.box_coder.decode(anchors, box_deltas.float(), strides)
        return postprocess_detections(
            probability_logits(scores),
            boxes,
            anchors,
            per_level,
            DecodedBoxes,
            image_sizes,
            score_thr=self.score_thr,
            pre_nms_topk=self.pre_nms_topk,
            nms_iou=self.nms_iou,
            max_dets=self.max_dets,
        )
