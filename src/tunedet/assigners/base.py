"""What every assigner returns, and the ``assign`` contract.

``assign(anchors (A, 4), num_anchors_per_level: list[int], gt_boxes (B, M, 4),
gt_labels (B, M)) -> AssignResult`` for the whole padded batch at once (``gt_labels``
``-1`` marks padding). Assigners whose ``needs_predictions`` attribute is True
(``hungarian``) also take the keyword arguments ``pred_scores (B, A, C)`` (class
probabilities) and ``pred_boxes (B, A, 4)`` (decoded xyxy px), which the detector passes
detached; the others never receive them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class AssignResult(NamedTuple):
    """Assignment of a batch of anchors (or points) to padded ground truth.

    matched: (B, A) long; -1 ignore, 0 background, k ≥ 1 → GT k - 1 of that image.
    max_iou: (B, A) float; IoU with the matched GT for positives, otherwise the best IoU
        with any real GT of the image (0 when it has none).
    matched_topk: (B, A, K) long or None; only from assigners that let one anchor serve
        several GTs (``max_iou_topk``): the codes of up to K GTs of each anchor, best
        first, 0 in unused slots. Column 0 equals ``matched`` where ``matched > 0``.
        Consumers that know nothing of it use ``matched`` and lose only the extra GTs.
    """

    matched: Tensor
    max_iou: Tensor
    matched_topk: Tensor | None = None

    @property
    def positive(self) -> Tensor:
        """(B, A) bool, anchors matched to a GT."""
        return self.matched > 0

    @property
    def negative(self) -> Tensor:
        """(B, A) bool, background anchors."""
        return self.matched == 0

    @property
    def num_positive(self) -> int:
        return int(self.positive.sum())


def all_background(num_images: int, num_anchors: int, like: Tensor) -> AssignResult:
    """Result for a batch without any ground truth: every anchor background."""
    return AssignResult(
        matched=torch.zeros(num_images, num_anchors, dtype=torch.long, device=like.device),
        max_iou=torch.zeros(num_images, num_anchors, dtype=like.dtype, device=like.device),
    )


def check_levels(anchors: Tensor, num_anchors_per_level: list[int]) -> None:
    """Raise if ``num_anchors_per_level`` does not add up to the number of anchors."""
    if sum(num_anchors_per_level) != anchors.shape[0]:
        raise ValueError(
            f"num_anchors_per_level sums to {sum(num_anchors_per_level)}, "
            f"but there are {anchors.shape[0]} anchors"
        )
