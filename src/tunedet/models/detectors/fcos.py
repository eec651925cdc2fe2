"""FCOS (Tian et al., 2019) and the detectors built from the same parts: ATSS (Zhang et al.,
2020) as an assigner + coder preset, and an NMS-free one-to-one variant (OneNet, Sun et al.,
2021) with the Hungarian assigner."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tunedet.assigners.base import AssignResult
from tunedet.boxes.iou import aligned_box_iou
from tunedet.config.registry import register
from tunedet.losses.centerness import centerness_loss, centerness_targets
from tunedet.losses.rank_mean import mean_count_over_ranks, reduce_mean
from tunedet.models.postprocess import postprocess_detections

Fraction = Annotated[float, Field(ge=0, le=1)]
Weight = Annotated[float, Field(ge=0)]


def point_distances(anchors: Tensor, boxes: Tensor) -> Tensor:
    """``(l, t, r, b) (..., 4)``: distances from each anchor's centre to its box's edges."""
    px = (anchors[..., 0] + anchors[..., 2]) / 2
    py = (anchors[..., 1] + anchors[..., 3]) / 2
    return torch.stack(
        (px - boxes[..., 0], py - boxes[..., 1], boxes[..., 2] - px, boxes[..., 3] - py), dim=-1
    )


@register(
    "detector",
    "fcos",
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
class FCOS(nn.Module):
    """FCOS / ATSS / NMS-free OneNet: one point per location, centerness, sqrt(cls·ctr) scores.

    One point (one square anchor) per location, class logits, box regression and a
    centerness branch; score = sqrt(cls · centerness) at test time.
    ``head(feats) -> (cls_logits (B, A, C), box_regression (B, A, 4), quality_logits
    (B, A) or None)`` in the anchor generator's (level, y, x) order; the anchor's centre is
    the point. ``box_coder.decode(anchors, box_regression)`` gives the boxes: ``distance``
    for FCOS (the head outputs pixel distances ``l, t, r, b``), ``delta`` for ATSS
    (anchors of side ``octave_base_scale · stride``).

    Losses, each divided by ``num_pos`` (positives in the batch, at least 1):
    ``cls``: ``cls_loss`` summed over classes and every non-ignored point; ``box``:
    ``box_loss`` of the positives, times ``box_loss_weight``; with
    ``box_loss_weighting="centerness"`` (FCOS's improved recipe, ATSS) each positive is
    weighted by its centerness target and the sum divided by the targets' sum instead
    (with one-to-one assignment use ``mean``: a matched point may lie outside its GT,
    where the centerness is 0); ``quality``: BCE of the quality logit against the
    centerness of the point in its GT (``quality_target="centerness"``, the paper) or the
    IoU of the (detached) decoded box with its GT (``"iou"``), times
    ``quality_loss_weight``. Assigners with ``needs_predictions`` (``hungarian``) get the
    detached class probabilities and decoded boxes. ``nms: false`` skips NMS at test
    time (top-k by score only), for one-to-one assignment.
    """

    # read by models/build.py's combination checks
    passes_predictions_to_assigner = True
    passes_loss_to_sampler = False
    passes_strides = False
    background_logit = False
    two_stage = False

    # sub-specs a config may leave out (FCOS with its improvements; read by config/schema.py)
    default_components = {
        "head": {"type": "fcos"},
        "anchor_generator": {
            "type": "grid",
            "octave_base_scale": 8.0,
            "scales_per_octave": 1,
            "ratios": [1.0],
        },
        "assigner": {"type": "fcos"},
        "box_coder": {"type": "distance"},
        "cls_loss": {"type": "focal", "alpha": 0.25, "gamma": 2.0},
        "box_loss": {"type": "giou"},
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
        box_loss_weight: Weight = 1.0,
        box_loss_weighting: Literal["centerness", "mean"] = "centerness",
        quality_target: Literal["centerness", "iou"] = "centerness",
        quality_loss_weight: Weight = 1.0,
        score_thr: Fraction = 0.05,
        pre_nms_topk: Annotated[int, Field(ge=1)] = 1000,
        nms: bool = True,
        nms_iou: Fraction = 0.6,
        max_dets: Annotated[int, Field(ge=1)] = 100,
    ):
        super().__init__()
        if getattr(box_coder, "normalize_by_stride", False):
            raise ValueError(
                "model.box_coder.normalize_by_stride: the fcos head already scales its "
                "outputs by the stride (head.box_activation: relu_stride); set it to false"
            )
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
        self.box_loss_weighting = box_loss_weighting
        self.quality_target = quality_target
        self.quality_loss_weight = quality_loss_weight
        self.score_thr = score_thr
        self.pre_nms_topk = pre_nms_topk
        self.nms = nms
        self.nms_iou = nms_iou
        self.max_dets = max_dets

    def dense_outputs(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor, list]:
        """images: (B, 3, H, W) → cls_logits (B, A, C), box_regression (B, A, 4),
        quality_logits (B, A) or None, anchors (A, 4) xyxy px, num_anchors_per_level."""
        feats = self.neck(self.backbone(images))
        cls_logits, box_regression, quality_logits = self.head(feats)
        levels = self.anchor_generator.grid_anchors(
            [tuple(f.shape[-2:]) for f in feats], device=images.device, dtype=torch.float32
        )
        anchors = torch.cat(levels) if len(levels) > 1 else levels[0]
        return cls_logits, box_regression, quality_logits, anchors, [len(a) for a in levels]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, list[int]]:
        """The dense-detector outputs shared with RetinaNet (read by ``analysis``):
        cls_logits (B, A, C), box_regression (B, A, 4), anchors (A, 4), per-level counts."""
        cls_logits, box_regression, _, anchors, per_level = self.dense_outputs(images)
        return cls_logits, box_regression, anchors, per_level

    def assign_targets(
        self,
        cls_logits: Tensor,
        box_regression: Tensor,
        anchors: Tensor,
        num_anchors_per_level: list[int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> AssignResult:
        """Run the assigner (predictions passed only when it needs them);
        ``gt_boxes (B, M, 4)``, ``gt_labels (B, M)`` with M ≥ 1."""
        with torch.no_grad():
            predictions = {}
            if getattr(self.assigner, "needs_predictions", False):
                predictions = {
                    "pred_scores": cls_logits.detach().float().sigmoid(),
                    "pred_boxes": self.box_coder.decode(anchors, box_regression.detach().float()),
                }
            return self.assigner.assign(
                anchors, num_anchors_per_level, gt_boxes, gt_labels, **predictions
            )

    def loss(self, images: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> dict[str, Tensor]:
        """images: (B, 3, H, W); gt_boxes: (B, M, 4) xyxy px; gt_labels: (B, M), -1 padding.

        Returns ``{"cls", "box"}`` and ``"quality"`` when the head has a quality branch.
        """
        cls_logits, box_regression, quality_logits, anchors, per_level = self.dense_outputs(images)
        cls_logits, box_regression = cls_logits.float(), box_regression.float()
        gt_boxes = gt_boxes.to(anchors)
        if gt_labels.shape[1] == 0:  # keep gathers valid; a padded slot never matches
            gt_boxes = gt_boxes.new_zeros(gt_boxes.shape[0], 1, 4)
            gt_labels = gt_labels.new_full((gt_labels.shape[0], 1), -1)

        matched = self.assign_targets(
            cls_logits, box_regression, anchors, per_level, gt_boxes, gt_labels
        ).matched
        positive = matched > 0  # (B, A)
        gt_index = (matched - 1).clamp(min=0)
        # shared by all ranks under DDP, so the gradient is that of the global batch
        num_pos = mean_count_over_ranks(positive.sum().to(cls_logits.dtype))

        labels = gt_labels.gather(1, gt_index).clamp(min=0)  # (B, A)
        cls_targets = F.one_hot(labels, self.num_classes).to(cls_logits.dtype)
        cls_targets *= positive[..., None]
        cls_values = self.cls_loss(cls_logits, cls_targets).sum(dim=-1)  # (B, A)
        cls_term = torch.where(matched >= 0, cls_values, 0.0).sum() / num_pos

        target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))[positive]
        pos_anchors = anchors.expand_as(box_regression)[positive]
        pos_regression = box_regression[positive]
        pred_boxes = self.box_coder.decode(pos_anchors, pos_regression)
        if self.box_loss.on_boxes:
            box_values = self.box_loss(pred_boxes, target_boxes)
        else:
            box_values = self.box_loss(
                pos_regression, self.box_coder.encode(pos_anchors, target_boxes)
            )
        centerness = centerness_targets(point_distances(pos_anchors, target_boxes))
        if self.box_loss_weighting == "centerness":
            normaliser = reduce_mean(centerness.sum().detach()).clamp(min=1e-6)
            box_term = (box_values * centerness).sum() / normaliser
        else:
            box_term = box_values.sum() / num_pos
        losses = {"cls": cls_term, "box": box_term * self.box_loss_weight}

        if quality_logits is not None:
            if self.quality_target == "iou":
                quality = aligned_box_iou(pred_boxes.detach(), target_boxes).clamp(min=0)
            else:
                quality = centerness
            quality_values = centerness_loss(quality_logits.float()[positive], quality)
            losses["quality"] = quality_values.sum() / num_pos * self.quality_loss_weight
        return losses

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W); image_sizes: (B, 2) (h, w) of the unpadded images →
        per image ``boxes (K, 4)`` xyxy px, ``scores (K,)``, ``labels (K,)``; the score is
        ``sqrt(sigmoid(cls) · sigmoid(quality))`` with a quality branch, else the class
        probability."""
        cls_logits, box_regression, quality_logits, anchors, per_level = self.dense_outputs(images)
        return postprocess_detections(
            cls_logits.float(),
            box_regression.float(),
            anchors,
            per_level,
            self.box_coder,
            image_sizes,
            score_thr=self.score_thr,
            pre_nms_topk=self.pre_nms_topk,
            nms_iou=self.nms_iou if self.nms else None,
            max_dets=self.max_dets,
            score_factors=None if quality_logits is None else quality_logits.float().sigmoid(),
        )
