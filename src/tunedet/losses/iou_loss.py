"""IoU-family box losses on decoded xyxy boxes: ``1 − IoU``, ``1 − GIoU``, ``1 − DIoU``,
``1 − CIoU`` (see ``tunedet.boxes.iou`` for the formulas; CIoU's α·v term has α detached).

Functional forms take ``pred, target (..., 4)`` (``weight (...)``, ``reduction``,
``normalizer`` as in ``reduce_loss``); the registered classes map
``(pred (N, 4), target (N, 4)) -> (N,)`` and have ``on_boxes = True``.
"""

from __future__ import annotations

from torch import Tensor, nn

from tunedet.boxes.iou import aligned_box_iou
from tunedet.config.registry import register
from tunedet.losses.reduction import Reduction, reduce_loss


def iou_loss(
    pred: Tensor,
    target: Tensor,
    eps: float = 1e-7,
    reduction: Reduction = "none",
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """``1 − IoU(pred, target)`` for ``pred, target (..., 4)`` xyxy."""
    return reduce_loss(1 - aligned_box_iou(pred, target, "iou", eps), reduction, weight, normalizer)


def giou_loss(
    pred: Tensor,
    target: Tensor,
    eps: float = 1e-7,
    reduction: Reduction = "none",
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """``1 − GIoU(pred, target)`` for ``pred, target (..., 4)`` xyxy; in ``[0, 2]``."""
    return reduce_loss(
        1 - aligned_box_iou(pred, target, "giou", eps), reduction, weight, normalizer
    )


def diou_loss(
    pred: Tensor,
    target: Tensor,
    eps: float = 1e-7,
    reduction: Reduction = "none",
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """``1 − DIoU(pred, target)`` for ``pred, target (..., 4)`` xyxy."""
    return reduce_loss(
        1 - aligned_box_iou(pred, target, "diou", eps), reduction, weight, normalizer
    )


def ciou_loss(
    pred: Tensor,
    target: Tensor,
    eps: float = 1e-7,
    reduction: Reduction = "none",
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """``1 − CIoU(pred, target)`` for ``pred, target (..., 4)`` xyxy (``target`` sets the aspect)."""
    return reduce_loss(
        1 - aligned_box_iou(pred, target, "ciou", eps), reduction, weight, normalizer
    )


class _IoUFamilyLoss(nn.Module):
    on_boxes = True
    kind = "iou"

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return 1 - aligned_box_iou(pred, target, self.kind, self.eps)


@register("box_loss", "iou")
class IoULoss(_IoUFamilyLoss):
    """``1 − IoU`` on decoded xyxy boxes: ``(N, 4), (N, 4) -> (N,)``."""

    kind = "iou"


@register("box_loss", "giou")
class GIoULoss(_IoUFamilyLoss):
    """``1 − GIoU`` on decoded xyxy boxes: ``(N, 4), (N, 4) -> (N,)``."""

    kind = "giou"


@register("box_loss", "diou")
class DIoULoss(_IoUFamilyLoss):
    """``1 − DIoU`` on decoded xyxy boxes: ``(N, 4), (N, 4) -> (N,)``."""

    kind = "diou"


@register("box_loss", "ciou")
class CIoULoss(_IoUFamilyLoss):
    """``1 − CIoU`` on decoded xyxy boxes (α·v with α detached): ``(N, 4), (N, 4) -> (N,)``."""

    kind = "ciou"
