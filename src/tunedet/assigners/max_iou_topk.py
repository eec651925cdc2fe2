"""Max-IoU assignment where one anchor may serve up to K GTs (crowded scenes).

CrowdDet (Chu et al., 2020), "one proposal, multiple predictions": in a crowd an anchor
overlaps several GTs well, and forcing it to pick one leaves the others without
anchors. Here each anchor keeps every GT it would be positive for, up to ``k``.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from tunedet.assigners.base import AssignResult, all_background
from tunedet.assigners.max_iou import threshold_matches
from tunedet.assigners.overlaps import gt_best_anchors, summarise_iou
from tunedet.config.registry import register

Fraction = Annotated[float, Field(ge=0, le=1)]


@register("assigner", "max_iou_topk")
class MaxIoUTopKAssigner:
    """``max_iou`` with up to ``k`` GTs per anchor, returned in ``AssignResult.matched_topk``.

    An anchor's GTs are those that claim it as their best anchor (low-quality matches,
    as in ``max_iou``: last GT first) followed by every GT with IoU ≥ ``pos_iou_thr``
    by decreasing IoU (ties: lower GT index first), without repeats, cut at ``k``.
    ``matched`` is the first of them, which makes it exactly ``max_iou``'s ``matched``
    for the same thresholds; background and ignore are decided by the best IoU as there.
    ``matched_topk (B, A, k)`` holds the codes (GT index + 1), 0 in unused slots.

    A detector with one box per anchor (RetinaNet) trains the anchor's classifier on the
    union of its GTs' classes and regresses the first GT's box; detectors that train an
    anchor on one GT (softmax heads, FCOS, YOLOv3) refuse it when built.
    """

    several_gts_per_anchor = True  # read by models/build.py's combination checks

    def __init__(
        self,
        k: Annotated[int, Field(ge=1)] = 2,
        pos_iou_thr: Fraction = 0.5,
        neg_iou_thr: Fraction = 0.4,
        min_pos_iou: Fraction = 0.0,
        match_low_quality: bool = True,
        gt_max_assign_all: bool = True,
    ):
        if neg_iou_thr > pos_iou_thr:
            raise ValueError(f"neg_iou_thr {neg_iou_thr} is above pos_iou_thr {pos_iou_thr}")
        self.k = k
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

        Returns ``matched (B, A)``, ``max_iou (B, A)`` and ``matched_topk (B, A, k)``.
        """
        num_images, num_gt = gt_labels.shape
        num_anchors = anchors.shape[0]
        if num_gt == 0:
            empty = all_background(num_images, num_anchors, anchors)
            topk = empty.matched.new_zeros(num_images, num_anchors, self.k)
            return empty._replace(matched_topk=topk)
        gt_boxes = gt_boxes.to(anchors)
        valid = gt_labels >= 0
        summary = summarise_iou(anchors, gt_boxes, valid, topk=self.k)
        # by IoU: (B, A, k') codes and sort keys, invalid slots key -inf
        iou_codes = summary.topk_gt.transpose(1, 2) + 1
        iou_keys = summary.topk_iou.transpose(1, 2)
        iou_keys = iou_keys.masked_fill(iou_keys < self.pos_iou_thr, float("-inf"))

        claim_codes = torch.zeros_like(iou_codes[..., :1])
        if self.match_low_quality:
            claim_codes = self._claims(anchors, gt_boxes, summary, valid)
        # claims rank above any IoU (key 2 + rank), IoU slots already claimed drop out
        claim_keys = torch.where(
            claim_codes > 0,
            2.0 + torch.arange(claim_codes.shape[-1], 0, -1, device=anchors.device),
            float("-inf"),
        ).to(iou_keys.dtype)
        repeated = (iou_codes[..., :, None] == claim_codes[..., None, :]).any(-1)
        iou_keys = iou_keys.masked_fill(repeated, float("-inf"))
        keys = torch.cat([claim_keys, iou_keys], dim=-1)
        codes = torch.cat([claim_codes, iou_codes], dim=-1)
        order = keys.sort(dim=-1, descending=True, stable=True).indices[..., : self.k]
        topk = torch.where(keys.gather(-1, order) > float("-inf"), codes.gather(-1, order), 0)
        if topk.shape[-1] < self.k:
            topk = torch.cat([topk, topk.new_zeros(*topk.shape[:-1], self.k - topk.shape[-1])], -1)

        matched = threshold_matches(summary.best_iou, summary.best_gt, self)
        matched = torch.where(topk[..., 0] > 0, topk[..., 0], matched)
        max_iou = summary.best_iou.clamp(min=0)
        claimed = claim_codes[..., 0] > 0
        claimer_iou = summary.gt_best_iou.gather(1, (claim_codes[..., 0] - 1).clamp(min=0))
        max_iou = torch.where(claimed, claimer_iou, max_iou)
        return AssignResult(matched, max_iou, topk)

    def _claims(self, anchors, gt_boxes, summary, valid) -> Tensor:
        """(B, A, k) codes of the GTs claiming each anchor as their best, last GT first."""
        num_images, num_gt = valid.shape
        num_anchors = anchors.shape[0]
        gt_best = summary.gt_best_iou
        eligible = valid & (gt_best >= self.min_pos_iou) & (gt_best > 0)
        image, gt, anchor = gt_best_anchors(anchors, gt_boxes, summary, eligible)
        if not self.gt_max_assign_all:  # the first best anchor of each GT only
            pair = image * num_gt + gt
            first = torch.full((num_images * num_gt,), num_anchors, device=anchors.device)
            first = first.scatter_reduce(0, pair, anchor, reduce="amin")
            keep = anchor == first[pair]
            image, gt, anchor = image[keep], gt[keep], anchor[keep]
        # rank the claims of each anchor, last GT first, keep k
        slot = image * num_anchors + anchor
        order = torch.argsort(slot * (num_gt + 1) + (num_gt - gt), stable=True)
        slot, gt = slot[order], gt[order]
        is_start = torch.ones_like(slot, dtype=torch.bool)
        is_start[1:] = slot[1:] != slot[:-1]
        position = torch.arange(len(slot), device=slot.device)
        group_start = torch.cummax(torch.where(is_start, position, 0), dim=0).values
        rank = position - group_start
        keep = rank < self.k
        codes = torch.zeros(num_images * num_anchors, self.k, dtype=torch.long, device=slot.device)
        codes[slot[keep], rank[keep]] = gt[keep] + 1
        return codes.view(num_images, num_anchors, self.k)
