"""The ``reduction`` argument shared by the functional losses."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Reduction = Literal["none", "mean", "sum"]


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` (``"none"``, ``"mean"`` or ``"sum"``) to an element-wise loss."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"unknown reduction '{reduction}' (choices: none, mean, sum)")
