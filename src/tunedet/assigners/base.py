"""What every assigner returns."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class AssignResult(NamedTuple):
    """Assignment of a batch of anchors (or points) to padded ground truth.

    matched: (B, A) long; -1 ignore, 0 background, k ≥ 1 → GT k - 1 of that image.
    max_iou: (B, A) float; IoU with the matched GT for positives, otherwise the best IoU
        with any real GT of the image (0 when it has none).
    """

    matched: Tensor
    max_iou: Tensor

    @property
    def positive(self) -> Tensor:
        """(B, A) bool, anchors matched to a GT."""
        return self.matched > 0

    @property
    def num_positive(self) -> int:
        return int(self.positive.sum())


def all_background(num_images: int, num_anchors: int, like: Tensor) -> AssignResult:
    """Result for a batch without any ground truth: every anchor background."""
    return AssignResult(
        matched=torch.zeros(num_images, num_anchors, dtype=torch.long, device=like.device),
        max_iou=torch.zeros(num_images, num_anchors, dtype=like.dtype, device=like.device),
    )


def finish_max_iou(ious: Tensor, matched: Tensor) -> Tensor:
    """(B, A) IoU with the matched GT where matched ≥ 1, else the best IoU (≥ 0).

    ious: (B, M, A) with padded GT rows set negative; matched: (B, A) long.
    """
    best = ious.max(dim=1).values.clamp(min=0)
    gt_index = (matched - 1).clamp(min=0)
    with_matched = ious.gather(1, gt_index[:, None, :]).squeeze(1)
    return torch.where(matched > 0, with_matched, best)
