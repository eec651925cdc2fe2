"""ATSS (Zhang et al., 2020): adaptive IoU threshold from the statistics of nearby anchors."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from tunedet.assigners.base import AssignResult, all_background, finish_max_iou
from tunedet.boxes.iou import box_iou
from tunedet.config.registry import register


@register("assigner", "atss")
class ATSSAssigner:
    """Adaptive training sample selection, batched over images and GTs.

    For each GT: per level, the ``topk`` anchors whose centres are nearest (L2) to
    the GT centre are candidates; threshold = mean + std of the candidates' IoUs
    (unbiased std, ``torch.std``'s default as in the paper's code); positives are the
    candidates with IoU ≥ threshold whose centre lies strictly inside the GT. An
    anchor that is positive for several GTs takes the one with the highest IoU.
    Everything else is background; ATSS ignores nothing.
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
        num_images, num_gt = gt_labels.shape
        num_anchors = anchors.shape[0]
        if sum(num_anchors_per_level) != num_anchors:
            raise ValueError(
                f"num_anchors_per_level sums to {sum(num_anchors_per_level)}, "
                f"but there are {num_anchors} anchors"
            )
        if num_gt == 0:
            return all_background(num_images, num_anchors, anchors)
        valid = gt_labels >= 0  # (B, M)
        ious = box_iou(gt_boxes, anchors.expand(num_images, num_anchors, 4))  # (B, M, A)
        ious = ious.masked_fill(~valid[..., None], -1.0)

        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # (A, 2)
        gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2  # (B, M, 2)
        distances = (gt_centres[:, :, None, :] - anchor_centres[None, None]).norm(dim=-1)

        candidates = []  # global anchor indices, (B, M, k_l) per level
        start = 0
        for count in num_anchors_per_level:
            k = min(self.topk, count)
            if k > 0:
                nearest = distances[:, :, start : start + count].topk(k, dim=2, largest=False)
                candidates.append(nearest.indices + start)
            start += count
        candidates = torch.cat(candidates, dim=2)  # (B, M, K)

        candidate_ious = ious.gather(2, candidates)
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

        # IoU of each (GT, anchor) pair that is positive, -inf elsewhere; the best GT wins
        positive_ious = torch.full_like(ious, float("-inf"))
        positive_ious.scatter_(2, candidates, candidate_ious.masked_fill(~positive, float("-inf")))
        best_iou, best_gt = positive_ious.max(dim=1)  # (B, A)
        matched = torch.where(best_iou > float("-inf"), best_gt + 1, torch.zeros_like(best_gt))
        return AssignResult(matched, finish_max_iou(ious, matched))
