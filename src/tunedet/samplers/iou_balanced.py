"""IoU-balanced negative sampling (Libra R-CNN, Pang et al., 2019): hard negatives, those
of higher IoU, are rare under uniform sampling; sampling evenly across IoU bins finds them."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from tunedet.assigners.base import AssignResult
from tunedet.config.registry import register
from tunedet.samplers.base import cap_positives, negative_budget, pick_per_image


@register("sampler", "iou_balanced_neg")
class IoUBalancedNegSampler:
    """``num`` anchors per image: positives drawn uniformly (at most ``pos_fraction``),
    negatives balanced over IoU.

    Negatives with IoU ≥ ``floor_thr`` are split into ``num_bins`` equal IoU intervals
    between ``max(floor_thr, 0)`` and the image's highest negative IoU, and each bin gives
    an equal share, drawn uniformly; with ``floor_thr ≥ 0`` the negatives below it give
    ``floor_fraction`` of the negatives (``floor_thr = -1``: no floor set). Bins short of
    their share leave the shortfall to a uniform draw over the remaining negatives.
    IoU is ``AssignResult.max_iou``, the best IoU with any GT.
    """

    needs_loss = False

    def __init__(
        self,
        num: Annotated[int, Field(ge=1)] = 512,
        pos_fraction: Annotated[float, Field(ge=0, le=1)] = 0.25,
        neg_pos_ub: float = -1.0,
        floor_thr: Annotated[float, Field(ge=-1, lt=1)] = -1.0,
        floor_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0,
        num_bins: Annotated[int, Field(ge=1)] = 3,
    ):
        if floor_thr < 0 and floor_fraction > 0:
            raise ValueError("floor_fraction > 0 needs a floor_thr ≥ 0")
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub
        self.floor_thr = floor_thr
        self.floor_fraction = floor_fraction
        self.num_bins = num_bins

    def sample(self, assign_result: AssignResult, anchor_loss: Tensor | None = None) -> Tensor:
        """→ (B, A) bool."""
        positive, negative = assign_result.positive, assign_result.negative
        num_pos = cap_positives(positive, self.num, self.pos_fraction)
        chosen = pick_per_image(positive, num_pos)
        num_neg = negative_budget(self.num, chosen.sum(dim=1), self.neg_pos_ub)

        iou = assign_result.max_iou
        floor = max(self.floor_thr, 0.0)
        balanced = negative & (iou >= floor) if self.floor_thr >= 0 else negative
        if self.floor_thr >= 0:
            floor_count = (num_neg * self.floor_fraction).long()
            chosen |= pick_per_image(negative & (iou < floor), floor_count)
        else:
            floor_count = torch.zeros_like(num_neg)
        top = iou.masked_fill(~balanced, floor).amax(dim=1, keepdim=True)  # (B, 1)
        width = (top - floor).clamp(min=1e-12) / self.num_bins
        bin_index = ((iou - floor) / width).floor().clamp(0, self.num_bins - 1)
        per_bin = (num_neg - floor_count) // self.num_bins
        for b in range(self.num_bins):
            chosen |= pick_per_image(balanced & (bin_index == b), per_bin)
        shortfall = num_pos + num_neg - chosen.sum(dim=1)
        chosen |= pick_per_image(negative & ~chosen, shortfall)
        return chosen
