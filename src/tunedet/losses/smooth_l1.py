"""Coordinate-wise box regression losses on encoded deltas: smooth L1, L1, L2.

The functional forms are element-wise like ``torch.nn.functional`` (``weight``,
``reduction``, ``normalizer`` as in ``reduce_loss``); the registered
classes sum over the 4 coordinates: ``(pred (N, 4), target (N, 4)) -> (N,)``.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.losses.reduction import Reduction, reduce_loss


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    beta: float = 1.0 / 9,
    reduction: Reduction = "none",
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Smooth L1 (Huber / β): ``0.5·d²/β`` for ``|d| < β``, else ``|d| − 0.5·β``; ``β = 0`` is L1.

    Detectron's default ``β = 1/9`` for box deltas.
    """
    diff = (pred - target).abs()
    if beta <= 0:
        return reduce_loss(diff, reduction, weight, normalizer)
    loss = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    return reduce_loss(loss, reduction, weight, normalizer)


def l1_loss(
    pred: Tensor,
    target: Tensor,
    reduction: Reduction = "none",
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """``|pred − target|`` element-wise."""
    return reduce_loss((pred - target).abs(), reduction, weight, normalizer)


def l2_loss(
    pred: Tensor,
    target: Tensor,
    reduction: Reduction = "none",
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """``(pred − target)²`` element-wise."""
    return reduce_loss((pred - target) ** 2, reduction, weight, normalizer)


@register("box_loss", "smooth_l1")
class SmoothL1Loss(nn.Module):
    """Smooth L1 on encoded deltas, summed over the 4 coordinates: ``(N, 4), (N, 4) -> (N,)``."""

    on_boxes = False

    def __init__(self, beta: Annotated[float, Field(ge=0)] = 1.0 / 9) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return smooth_l1_loss(pred, target, self.beta).sum(-1)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


@register("box_loss", "l1")
class L1Loss(nn.Module):
    """L1 on encoded deltas, summed over the 4 coordinates: ``(N, 4), (N, 4) -> (N,)``."""

    on_boxes = False

    def __init__(self) -> None:
        super().__init__()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return l1_loss(pred, target).sum(-1)


@register("box_loss", "l2")
class L2Loss(nn.Module):
    """Squared error on encoded deltas, summed over the 4 coordinates: ``(N, 4), (N, 4) -> (N,)``."""

    on_boxes = False

    def __init__(self) -> None:
        super().__init__()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return l2_loss(pred, target).sum(-1)
