"""FCOS centerness (Tian et al., 2019): how central a point is in its GT box, and its loss.

For a point at distances ``(l, t, r, b)`` from the box's edges,

    centerness = sqrt( min(l, r) / max(l, r) · min(t, b) / max(t, b) ),

1 at the centre, 0 on an edge. The head predicts it as a logit trained with BCE; at
test time it multiplies the class score, down-weighting off-centre boxes. FCOS
normalises the centerness loss by the number of positives, and weights the box loss
of each positive by its centerness target (normalised by their sum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tunedet.losses.reduction import Reduction, reduce_loss


def centerness_targets(distances: Tensor, eps: float = 1e-12) -> Tensor:
    """``distances (..., 4)`` = ``(l, t, r, b)`` → centerness ``(...)`` in ``[0, 1]``.

    Points outside the box (a negative distance) and degenerate boxes give 0.
    """
    distances = distances.clamp(min=0)
    left, top, right, bottom = distances.unbind(-1)
    horizontal = torch.minimum(left, right) / torch.maximum(left, right).clamp(min=eps)
    vertical = torch.minimum(top, bottom) / torch.maximum(top, bottom).clamp(min=eps)
    # sqrt has an infinite derivative at 0; targets carry no gradient anyway
    return (horizontal * vertical).clamp(min=0).sqrt().detach()


def centerness_loss(
    logits: Tensor,
    targets: Tensor,
    reduction: Reduction = "none",
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy of centerness ``logits (...)`` against ``targets (...)`` in
    ``[0, 1]``, from the logits (``softplus(x) − t·x``, finite for any logit).
    FCOS: ``reduction="mean"`` with ``normalizer`` = number of positives."""
    targets = targets.to(logits.dtype)
    loss = F.softplus(logits) - targets * logits
    return reduce_loss(loss, reduction, weight, normalizer)
