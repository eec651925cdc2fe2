"""The ``reduction`` (and ``weight``, ``normalizer``) arguments shared by the functional losses."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Reduction = Literal["none", "mean", "sum"]


def reduce_loss(
    loss: Tensor,
    reduction: str,
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Weight, then reduce an element-wise loss.

    ``weight`` broadcasts against ``loss`` (e.g. per-box weights ``(N,)`` for ``(N,)``, or
    ``(N, 1)`` for ``(N, 4)``). ``reduction``: ``"none"``, ``"sum"``, or ``"mean"`` —
    the sum divided by ``normalizer`` when given (the papers' normalisations: RetinaNet's
    focal loss and FCOS's centerness by the number of positives), else by the element count
    (0 for an empty loss, as torchvision does).
    """
    if weight is not None:
        loss = loss * weight
    if normalizer is not None and reduction != "mean":
        raise ValueError("normalizer needs reduction='mean' (it replaces the element count)")
    if reduction == "none":
        return loss
    if reduction == "mean":
        if normalizer is not None:
            return loss.sum() / normalizer
        # no elements (e.g. no positives): 0 with a graph, not mean()'s NaN
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"unknown reduction '{reduction}' (choices: none, mean, sum)")
