"""The sampler that samples nothing away: every positive and every negative counts."""

from __future__ import annotations

from torch import Tensor

from tunedet.assigners.base import AssignResult
from tunedet.config.registry import register


@register("sampler", "pseudo")
class PseudoSampler:
    """All non-ignored anchors (``matched ≥ 0``): the dense detectors' default (RetinaNet's
    focal loss handles the imbalance instead of sampling)."""

    needs_loss = False

    def sample(self, assign_result: AssignResult, anchor_loss: Tensor | None = None) -> Tensor:
        """→ (B, A) bool."""
        return assign_result.matched >= 0
