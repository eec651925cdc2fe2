"""SSD's hard negative mining (Liu et al., 2016): all positives, the worst negatives at 3:1."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import Tensor

from tunedet.assigners.base import AssignResult
from tunedet.config.registry import register
from tunedet.samplers.base import pick_per_image


@register("sampler", "hard_negative")
class HardNegativeSampler:
    """Every positive, and per image the ``neg_pos_ratio`` · #positives negatives of
    highest confidence (classification) loss, at least ``min_negatives`` (SSD: 3:1 and 0;
    an image without positives then takes no negatives). Ranks by ``anchor_loss``.
    """

    needs_loss = True

    def __init__(
        self,
        neg_pos_ratio: Annotated[float, Field(ge=0)] = 3.0,
        min_negatives: Annotated[int, Field(ge=0)] = 0,
    ):
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives = min_negatives

    def sample(self, assign_result: AssignResult, anchor_loss: Tensor | None = None) -> Tensor:
        """anchor_loss: (B, A) → (B, A) bool."""
        if anchor_loss is None:
            raise ValueError("the hard_negative sampler needs anchor_loss")
        positive, negative = assign_result.positive, assign_result.negative
        num_neg = (positive.sum(dim=1) * self.neg_pos_ratio).long().clamp(min=self.min_negatives)
        return positive | pick_per_image(negative, num_neg, keys=anchor_loss)
