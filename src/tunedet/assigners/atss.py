"""ATSS (Zhang et al., 2020): adaptive IoU threshold from the statistics of nearby anchors."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from tunedet.assigners.base import AssignResult, all_background, check_levels
from tunedet.assigners.overlaps import aligned_anchor_iou, summarise_iou
from tunedet.config.registry import register


@register("assigner", "atss")
class ATSSAssigner:
    """Adaptive training sample selection, batched over images and GTs.

    For each GT: per level, the ``topk`` anchors whose centres are nearest (L2) to
    the GT centre are candidates; threshold = mean + std of the candidates' IoUs
    (unbiased std, ``torch.std``'s default as in the paper's code); positives are the
    candidates with IoU ≥ threshold whose centre lies strictly inside the GT. An
    anchor that is positive for several GTs takes the one with the highest IoU.
    Everything else is background; ATSS ignores nothing. Only the candidates' IoUs
    are computed; the (B, M, A) work is the centre distances, one level at a time.
    """

    def __init__(self, topk: Annotated[int, Field(ge=1)] = 9):
        self.topk = topk

    def assign(
        self,
        anchors: Tensor,
        num_anchors_per_level: list[int],
        gt_boxes: Tensor,
        gt_labels: Tensor,
    ) -> AssignResult:
        """anchors: (A, 4) xyxy, levels concatenated in order of ``num_anchors_per_level``;
        gt_boxes: (B, M, 4) xyxy; gt_labels: (B, M), -1 = padding."""
        check_levels(anchors, num_anchors_per_level)
        num_images, num_gt = gt_labels.shape
        num_anchors = anchors.shape[0]
        if num_gt == 0:
            return all_background(num_images, num_anchors, anchors)
        gt_boxes = gt_boxes.to(anchors)
        valid = gt_labels >= 0  # (B, M)
        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
        gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, M, 2)

        candidates = []  # global anchor indices, (B, M, k_l) per level
        start = 0
        for count in num_anchors_per_level:
            k = min(self.topk, count)
            if k > 0:
                level = anchor_centres[start : start + count]
                dx = gt_centres[..., 0, None] - level[:, 0]  # (B, M, A_l)
                dy = gt_centres[..., 1, None] - level[:, 1]
                squared = dx.mul_(dx).addcmul_(dy, dy)  # ranks as the L2 distance does
                nearest = squared.topk(k, dim=2, largest=False)
                candidates.append(nearest.indices + start)
            start += count
        candidates = torch.cat(candidates, dim=2)  # (B, M, K)

        candidate_ious = aligned_anchor_iou(gt_boxes[:, :, None, :], anchors[candidates])
        if candidates.shape[2] > 1:
            threshold = candidate_ious.mean(dim=2) + candidate_ious.std(dim=2)
        else:
            threshold = candidate_ious[..., 0]
        centres = anchor_centres[candidates]  # (B, M, K, 2)
        boxes = gt_boxes[:, :, None, :]
        inside = (
            torch.stack(
                [
                    centres[..., 0] - boxes[..., 0],
                    centres[..., 1] - boxes[..., 1],
                    boxes[..., 2] - centres[..., 0],
                    boxes[..., 3] - centres[..., 1],
                ],
                dim=-1,
            ).amin(dim=-1)
            > 0
        )
        positive = (candidate_ious >= threshold[..., None]) & inside & valid[..., None]

        # an anchor positive for several GTs takes the highest IoU, then the lower GT index
        image = torch.arange(num_images, device=anchors.device)[:, None, None]
        slot = (image * num_anchors + candidates)[positive]  # into (B·A,)
        pair_iou = candidate_ious[positive]
        gt_code = torch.arange(1, num_gt + 1, device=anchors.device)[None, :, None]
        gt_code = gt_code.expand_as(candidates)[positive]
        top = torch.full((num_images * num_anchors,), -1.0, dtype=pair_iou.dtype)
        top = top.to(anchors.device).scatter_reduce(0, slot, pair_iou, reduce="amax")
        winner = pair_iou == top[slot]
        matched = torch.full((num_images * num_anchors,), num_gt + 1, device=anchors.device)
        matched = matched.scatter_reduce(0, slot[winner], gt_code[winner], reduce="amin")
        matched = matched.masked_fill(matched > num_gt, 0).view(num_images, num_anchors)

        best_iou = summarise_iou(anchors, gt_boxes, valid).best_iou.clamp(min=0)
        max_iou = torch.where(matched > 0, top.view(num_images, num_anchors), best_iou)
        return AssignResult(matched, max_iou)
