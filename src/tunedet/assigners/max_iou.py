"""Max-IoU assignment (Faster R-CNN, RetinaNet, SSD): thresholds on the anchor's best IoU."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from tunedet.assigners.base import AssignResult, all_background
from tunedet.assigners.overlaps import IoUSummary, gt_best_anchors, summarise_iou
from tunedet.config.registry import register

Fraction = Annotated[float, Field(ge=0, le=1)]

# the papers' settings, as config dicts (``model.assigner``)
PRESETS = {
    # RetinaNet: ignore band 0.4 ≤ IoU < 0.5; every GT keeps its best anchors
    "retinanet": {"type": "max_iou", "pos_iou_thr": 0.5, "neg_iou_thr": 0.4},
    # RPN (Faster R-CNN): positives ≥ 0.7, negatives < 0.3, best anchors need ≥ 0.3
    "rpn": {"type": "max_iou", "pos_iou_thr": 0.7, "neg_iou_thr": 0.3, "min_pos_iou": 0.3},
    # SSD: each GT its single best prior first, then every prior ≥ 0.5; no ignore band
    "ssd": {
        "type": "max_iou",
        "pos_iou_thr": 0.5,
        "neg_iou_thr": 0.5,
        "min_pos_iou": 0.0,
        "gt_max_assign_all": False,
    },
}


@register("assigner", "max_iou")
class MaxIoUAssigner:
    """Assign each anchor to the GT it overlaps most, in four steps (Ren et al. 2015).

    1. every anchor starts as ignored (-1);
    2. anchors whose best IoU is below ``neg_iou_thr`` become background (0);
    3. anchors whose best IoU is at least ``pos_iou_thr`` take that GT;
    4. low-quality matches (``match_low_quality``): each GT whose best IoU is at least
       ``min_pos_iou`` (and above 0) takes its best anchor, or all anchors tying for it
       (``gt_max_assign_all``), even if that anchor was background, ignored or matched
       to another GT; when several GTs claim one anchor the last GT wins (mmdetection's
       order). Unlike torchvision's ``Matcher``, which keeps such an anchor's own best
       GT, the anchor goes to the GT it is best for, so every GT gets an anchor.

    Presets (``PRESETS``): RetinaNet 0.5 / 0.4 with the ignore band between; RPN 0.7 /
    0.3 with ``min_pos_iou=0.3``; SSD 0.5 / 0.5 with ``gt_max_assign_all=False``: each
    GT first takes its one best prior (SSD's bipartite step), then every prior ≥ 0.5.
    The IoU is reduced chunk by chunk (``overlaps.summarise_iou``), never stored whole.
    """

    per_image_anchors = True  # also assigns (B, A, 4) per-image boxes (R-CNN proposals)

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
        """anchors: (A, 4) xyxy, or (B, A, 4) per image (``per_image_anchors``: a second
        stage's proposals); gt_boxes: (B, M, 4) xyxy; gt_labels: (B, M), -1 = padding.

        ``num_anchors_per_level`` is unused (max-IoU ignores levels); it is part of the
        assigner interface.
        """
        num_images, num_gt = gt_labels.shape
        if num_gt == 0:
            return all_background(num_images, anchors.shape[-2], anchors)
        valid = gt_labels >= 0  # (B, M)
        summary = summarise_iou(anchors, gt_boxes.to(anchors), valid)
        matched = threshold_matches(summary.best_iou, summary.best_gt, self)
        max_iou = summary.best_iou.clamp(min=0)
        if self.match_low_quality:
            claimer = low_quality_claimers(anchors, gt_boxes.to(anchors), summary, valid, self)
            claimed = claimer > 0
            matched = torch.where(claimed, claimer, matched)
            claimer_iou = summary.gt_best_iou.gather(1, (claimer - 1).clamp(min=0))
            max_iou = torch.where(claimed, claimer_iou, max_iou)
        return AssignResult(matched, max_iou)


def threshold_matches(best_iou: Tensor, best_gt: Tensor, thresholds) -> Tensor:
    """Steps 1–3: (B, A) codes from each anchor's best IoU and GT; ``thresholds`` has
    ``pos_iou_thr`` and ``neg_iou_thr``."""
    matched = torch.full_like(best_gt, -1)
    matched[best_iou < thresholds.neg_iou_thr] = 0
    positive = best_iou >= thresholds.pos_iou_thr
    matched[positive] = best_gt[positive] + 1
    return matched


def low_quality_claimers(
    anchors: Tensor, gt_boxes: Tensor, summary: IoUSummary, valid: Tensor, rule
) -> Tensor:
    """Step 4: (B, A) code of the last GT that claims each anchor as its best, else 0.

    ``rule`` has ``min_pos_iou`` and ``gt_max_assign_all``; a GT claims only if its best
    IoU is ≥ ``min_pos_iou`` and > 0.
    """
    num_images, num_gt = valid.shape
    num_anchors = anchors.shape[-2]
    gt_best = summary.gt_best_iou
    eligible = valid & (gt_best >= rule.min_pos_iou) & (gt_best > 0)
    image, gt, anchor = gt_best_anchors(anchors, gt_boxes, summary, eligible)
    if not rule.gt_max_assign_all:  # the first best anchor of each GT only
        pair = image * num_gt + gt
        first = torch.full((num_images * num_gt,), num_anchors, device=anchors.device)
        first = first.scatter_reduce(0, pair, anchor, reduce="amin")
        keep = anchor == first[pair]
        image, gt, anchor = image[keep], gt[keep], anchor[keep]
    claimer = torch.zeros(num_images * num_anchors, dtype=torch.long, device=anchors.device)
    claimer.scatter_reduce_(0, image * num_anchors + anchor, gt + 1, reduce="amax")
    return claimer.view(num_images, num_anchors)
