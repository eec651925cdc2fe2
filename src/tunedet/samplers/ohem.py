"""Online hard example mining (Shrivastava et al., 2016): keep the anchors with the highest loss."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import Tensor

from tunedet.assigners.base import AssignResult
from tunedet.config.registry import register
from tunedet.samplers.base import cap_positives, negative_budget, pick_per_image


@register("sampler", "ohem")
class OHEMSampler:
    """``num`` anchors per image, the hardest ones: at most ``pos_fraction`` of them
    positive (the positives of highest loss), the rest the negatives of highest loss (at
    most ``neg_pos_ub`` per positive when ``neg_pos_ub ≥ 0``). Ranks by ``anchor_loss``,
    the current loss of each anchor (classification + box), detached.
    """

    needs_loss = True

    def __init__(
        self,
        num: Annotated[int, Field(ge=1)] = 512,
        pos_fraction: Annotated[float, Field(ge=0, le=1)] = 0.25,
        neg_pos_ub: float = -1.0,
    ):
        self.num = num
        self.pos_fraction = pos_fraction
        self.neg_pos_ub = neg_pos_ub

    def sample(self, assign_result: AssignResult, anchor_loss: Tensor | None = None) -> Tensor:
        """anchor_loss: (B, A) → (B, A) bool."""
        if anchor_loss is None:
            raise ValueError("the ohem sampler needs anchor_loss")
        positive, negative = assign_result.positive, assign_result.negative
        num_pos = cap_positives(positive, self.num, self.pos_fraction)
        chosen_pos = pick_per_image(positive, num_pos, keys=anchor_loss)
        num_neg = negative_budget(self.num, chosen_pos.sum(dim=1), self.neg_pos_ub)
        return chosen_pos | pick_per_image(negative, num_neg, keys=anchor_loss)
