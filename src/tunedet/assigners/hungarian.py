"""One-to-one assignment by minimum matching cost (DETR, Carion et al. 2020; OneNet, Sun et
al. 2021): each GT gets exactly the one prediction that costs least, solved exactly."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from tunedet.assigners.base import AssignResult, all_background, check_levels
from tunedet.assigners.overlaps import aligned_anchor_iou, summarise_iou
from tunedet.boxes.iou import generalized_box_iou
from tunedet.config.registry import register

Weight = Annotated[float, Field(ge=0)]
BIG_COST = 1e8  # stands in for non-finite costs (diverged predictions) in the solver


@register("assigner", "hungarian")
class HungarianAssigner:
    """Minimum-cost bipartite matching between predictions and GTs, one image at a time.

    cost(prediction, GT) = ``cls_weight`` · classification cost
    + ``l1_weight`` · L1 distance of the boxes, in units of the anchor grid's extent
    (min + max anchor centre per axis: the padded image size for cell-centred anchors)
    + ``giou_weight`` · (−GIoU). Classification cost of the GT's class with probability p:
    ``focal`` (Deformable DETR / OneNet): ``α·(1 − p)^γ·(−log p) − (1 − α)·p^γ·(−log(1 − p))``;
    ``prob`` (DETR): ``−p``. ``scipy.optimize.linear_sum_assignment`` matches each GT to
    a distinct prediction (``min(M, A)`` pairs); every other prediction is background,
    none is ignored. Needs predictions: ``assign(..., pred_scores (B, A, C)`` class
    probabilities, ``pred_boxes (B, A, 4)`` decoded xyxy px``)``; the detector passes
    them detached since ``needs_predictions`` is True. The cost and the solve (on the
    CPU) go one image at a time: a (M, A) cost per image instead of the batch's
    (B, M, A) keeps the memory of dense predictions (A ≈ 77 k at 640 px) small.
    """

    needs_predictions = True

    def __init__(
        self,
        cls_weight: Weight = 2.0,
        l1_weight: Weight = 5.0,
        giou_weight: Weight = 2.0,
        cls_cost: Literal["focal", "prob"] = "focal",
        alpha: Annotated[float, Field(ge=0, le=1)] = 0.25,
        gamma: Annotated[float, Field(ge=0)] = 2.0,
    ):
        self.cls_weight = cls_weight
        self.l1_weight = l1_weight
        self.giou_weight = giou_weight
        self.cls_cost = cls_cost
        self.alpha = alpha
        self.gamma = gamma

    def cost(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        pred_scores: Tensor,
        pred_boxes: Tensor,
    ) -> Tensor:
        """(B, M, A) matching cost of ``gt_boxes (B, M, 4)``, ``gt_labels (B, M)`` against
        ``pred_scores (B, A, C)``, ``pred_boxes (B, A, 4)``; padded GT rows are meaningless."""
        labels = gt_labels.clamp(min=0)
        # probability of each GT's class at every prediction: (B, M, A)
        num_preds = pred_scores.shape[1]
        prob = pred_scores.gather(2, labels[:, None, :].expand(-1, num_preds, -1)).transpose(1, 2)
        if self.cls_cost == "focal":
            eps = 1e-8
            pos = self.alpha * (1 - prob) ** self.gamma * -(prob + eps).log()
            neg = (1 - self.alpha) * prob**self.gamma * -(1 - prob + eps).log()
            cls = pos - neg
        else:
            cls = -prob
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        extent = (centres.amin(dim=0) + centres.amax(dim=0)).clamp(min=1e-6).repeat(2)  # (4,)
        l1 = torch.cdist(gt_boxes / extent, pred_boxes / extent, p=1)
        giou = generalized_box_iou(gt_boxes, pred_boxes)
        return self.cls_weight * cls + self.l1_weight * l1 - self.giou_weight * giou

    def assign(
        self,
        anchors: Tensor,
        num_anchors_per_level: list[int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
        *,
        pred_scores: Tensor | None = None,
        pred_boxes: Tensor | None = None,
    ) -> AssignResult:
        """anchors: (A, 4) xyxy; gt_boxes: (B, M, 4) xyxy; gt_labels: (B, M), -1 = padding;
        pred_scores: (B, A, C) probabilities; pred_boxes: (B, A, 4) xyxy px."""
        if pred_scores is None or pred_boxes is None:
            raise ValueError("the hungarian assigner needs pred_scores and pred_boxes")
        check_levels(anchors, num_anchors_per_level)
        num_images, num_gt = gt_labels.shape
        num_anchors = anchors.shape[0]
        if num_gt == 0:
            return all_background(num_images, num_anchors, anchors)
        gt_boxes = gt_boxes.to(anchors)
        valid = gt_labels >= 0
        pred_scores, pred_boxes = pred_scores.to(anchors), pred_boxes.to(anchors)
        counts = valid.sum(dim=1).tolist()
        order = torch.argsort((~valid).int(), dim=1, stable=True)  # real GTs first
        images, gts, preds = [], [], []
        for i, count in enumerate(counts):
            if count == 0:
                continue
            rows = order[i : i + 1, :count]
            cost = self.cost(
                anchors,
                gt_boxes[i : i + 1].gather(1, rows[..., None].expand(-1, -1, 4)),
                gt_labels[i : i + 1].gather(1, rows),
                pred_scores[i : i + 1],
                pred_boxes[i : i + 1],
            )[0]
            cost = torch.nan_to_num(cost.double(), nan=BIG_COST, posinf=BIG_COST, neginf=-BIG_COST)
            gt_rows, columns = linear_sum_assignment(cost.cpu().numpy())
            images.append(torch.full((len(columns),), i))
            gts.append(rows[0].cpu()[torch.as_tensor(gt_rows)])
            preds.append(torch.as_tensor(columns))
        matched = torch.zeros(num_images, num_anchors, dtype=torch.long, device=anchors.device)
        if images:
            image, gt, pred = (torch.cat(t).to(anchors.device) for t in (images, gts, preds))
            matched[image, pred] = gt + 1
        gt_index = (matched - 1).clamp(min=0)
        matched_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))
        matched_iou = aligned_anchor_iou(matched_boxes, anchors.expand_as(matched_boxes))
        best_iou = summarise_iou(anchors, gt_boxes, valid).best_iou.clamp(min=0)
        return AssignResult(matched, torch.where(matched > 0, matched_iou, best_iou))
