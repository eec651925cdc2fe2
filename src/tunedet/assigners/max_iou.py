"""Max-IoU assignment (Faster R-CNN, RetinaNet, SSD): thresholds on the anchor's best IoU."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from tunedet.assigners.base import AssignResult, all_background, finish_max_iou
from tunedet.boxes.iou import box_iou
from tunedet.config.registry import register

Fraction = Annotated[float, Field(ge=0, le=1)]


@register("assigner", "max_iou")
class MaxIoUAssigner:
    """Assign each anchor to the GT it overlaps most, in four steps (SPEC S6).

    1. every anchor starts as ignored (-1);
    2. anchors whose best IoU is below ``neg_iou_thr`` become background (0);
    3. anchors whose best IoU is at least ``pos_iou_thr`` take that GT;
    4. low-quality matches (``match_low_quality``): each GT whose best IoU is at least
       ``min_pos_iou`` (and above 0) takes its best anchor, or all anchors tying for it
       (``gt_max_assign_all``), even if that anchor was background, ignored or matched
       to another GT; when several GTs claim one anchor the last GT wins (mmdetection's
       order). Unlike torchvision's ``Matcher``, which keeps such an anchor's own best
       GT, the anchor goes to the GT it is best for, so every GT gets an anchor.

    RetinaNet: 0.5 / 0.4 with the ignore band between; RPN 0.7 / 0.3 with
    ``min_pos_iou=0.3``; SSD 0.5 / 0.5.
    """

    def __init__(
        self,
        pos_iou_thr: Fraction = 0.5,
        neg_iou_thr: Fraction = 0.4,
        min_pos_iou: Fraction = 0.0,
        match_low_quality: bool = True,
        gt_max_assign_all: bool = True,
    ):
        if neg_iou_thr > pos_iou_thr:
            raise ValueError(f"neg_iou_thr {neg_iou_thr} is above pos_iou_thr {pos_iou_thr}")
        self.pos_iou_thr = pos_iou_thr
        self.neg_iou_thr = neg_iou_thr
        self.min_pos_iou = min_pos_iou
        self.match_low_quality = match_low_quality
        self.gt_max_assign_all = gt_max_assign_all

    def assign(
        self,
        anchors: Tensor,
        num_anchors_per_level: list[int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> AssignResult:
        """anchors: (A, 4) xyxy; gt_boxes: (B, M, 4) xyxy; gt_labels: (B, M), -1 = padding.

        ``num_anchors_per_level`` is unused (max-IoU ignores levels); it is part of the
        assigner interface.
        """
        num_images, num_gt = gt_labels.shape
        num_anchors = anchors.shape[0]
        if num_gt == 0:
            return all_background(num_images, num_anchors, anchors)
        valid = gt_labels >= 0  # (B, M)
        ious = box_iou(gt_boxes, anchors.expand(num_images, num_anchors, 4))  # (B, M, A)
        ious = ious.masked_fill(~valid[..., None], -1.0)

        best_iou, best_gt = ious.max(dim=1)  # (B, A)
        matched = torch.full_like(best_gt, -1)
        matched[best_iou < self.neg_iou_thr] = 0
        positive = best_iou >= self.pos_iou_thr
        matched[positive] = best_gt[positive] + 1

        if self.match_low_quality:
            gt_best_iou, gt_best_anchor = ious.max(dim=2)  # (B, M)
            eligible = valid & (gt_best_iou >= self.min_pos_iou) & (gt_best_iou > 0)
            if self.gt_max_assign_all:
                claims = ious == gt_best_iou[..., None]
            else:
                claims = torch.zeros_like(ious, dtype=torch.bool)
                claims.scatter_(2, gt_best_anchor[..., None], True)
            claims &= eligible[..., None]  # (B, M, A)
            gt_number = torch.arange(1, num_gt + 1, device=matched.device)
            # the highest-numbered claiming GT wins, as a loop over GTs in order would do
            claimer = (claims * gt_number[None, :, None]).max(dim=1).values  # (B, A)
            matched = torch.where(claimer > 0, claimer, matched)

        return AssignResult(matched, finish_max_iou(ious, matched))
