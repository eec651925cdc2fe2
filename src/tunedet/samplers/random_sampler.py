"""Random sampling of a fixed number of anchors per image at a fixed positive fraction."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import Tensor

from tunedet.assigners.base import AssignResult
from tunedet.config.registry import register
from tunedet.samplers.base import cap_positives, negative_budget, pick_per_image


@register("sampler", "random")
class RandomSampler:
    """``num`` anchors per image, at most ``pos_fraction`` of them positive, both drawn
    uniformly; negatives fill the rest, at most ``neg_pos_ub`` per positive when
    ``neg_pos_ub ≥ 0``. RPN: 256 at 0.5; Fast/Faster R-CNN head: 512 at 0.25.

    ``add_gt_as_proposals`` concerns two-stage detectors only: the second stage adds the
    GT boxes to its proposals before sampling, so every GT has a perfect positive early
    in training. A one-stage detector has no proposals; it rejects ``True``.
    """

    needs_loss = False

    def __init__(
        self,
        num: Annotated[int, Field(ge=1)] = 256,
        pos_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5,
        neg_pos_ub: float = -1.0,
        add_gt_as_proposals: bool = False,
    ):
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub
        self.add_gt_as_proposals = add_gt_as_proposals

    def sample(self, assign_result: AssignResult, anchor_loss: Tensor | None = None) -> Tensor:
        """→ (B, A) bool."""
        positive, negative = assign_result.positive, assign_result.negative
        num_pos = cap_positives(positive, self.num, self.pos_fraction)
        chosen_pos = pick_per_image(positive, num_pos)
        num_neg = negative_budget(self.num, chosen_pos.sum(dim=1), self.neg_pos_ub)
        return chosen_pos | pick_per_image(negative, num_neg)
