"""Sigmoid classification losses: binary cross-entropy with logits and focal loss.

Both are computed from the logits, never as ``log(sigmoid(x))``: ``sigmoid`` saturates
to exactly 0 or 1 in float32 beyond |x| ≈ 17 (float16: ≈ 8) and the log then returns
``-inf``. With ``softplus(x) = log(1 + exp(x))`` (evaluated stably by torch),

    BCE(x, t) = t·softplus(−x) + (1 − t)·softplus(x) = softplus(x) − t·x,

finite for any logit and any soft target ``t ∈ [0, 1]``.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.losses.label_smoothing import smooth_binary_targets
from tunedet.losses.reduction import Reduction, reduce_loss


def bce_with_logits(logits: Tensor, targets: Tensor, reduction: Reduction = "none") -> Tensor:
    """Binary cross-entropy on ``logits`` vs (soft) ``targets`` in ``[0, 1]``, same shapes."""
    targets = targets.to(logits.dtype)
    return reduce_loss(F.softplus(logits) - targets * logits, reduction)


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "none",
) -> Tensor:
    """Focal loss (Lin et al. 2017): ``α_t · (1 − p_t)^γ · BCE(x, t)``.

    ``logits``, ``targets``: same shape, targets in ``[0, 1]`` (soft targets allowed, with
    ``p_t = p·t + (1 − p)·(1 − t)`` and ``α_t = α·t + (1 − α)·(1 − t)``). ``alpha < 0``
    disables the α weighting. Normalising (by the number of positives) is the caller's job.
    """
    targets = targets.to(logits.dtype)
    ce = F.softplus(logits) - targets * logits
    # 1 − p_t written as p·(1 − t) + (1 − p)·t, with 1 − p = sigmoid(−x): no cancellation
    one_minus_pt = torch.sigmoid(logits) * (1 - targets) + torch.sigmoid(-logits) * targets
    if 0 < gamma < 1:
        # d/dx (1 − p_t)^γ = γ·(1 − p_t)^(γ−1)·… is infinite where 1 − p_t underflows to 0
        one_minus_pt = one_minus_pt.clamp(min=torch.finfo(logits.dtype).tiny)
    if gamma != 0:
        ce = ce * one_minus_pt**gamma
    if alpha >= 0:
        ce = ce * (alpha * targets + (1 - alpha) * (1 - targets))
    return reduce_loss(ce, reduction)


@register("cls_loss", "focal")
class FocalLoss(nn.Module):
    """Sigmoid focal loss, element-wise: ``(logits (N, C), targets (N, C) float) -> (N, C)``.

    ``alpha`` weighs positives (``alpha < 0``: no weighting); ``gamma`` down-weights easy
    examples (``gamma = 0`` is plain BCE). ``label_smoothing`` ε maps targets
    ``t → t·(1 − ε) + ε/2`` (see ``losses/label_smoothing.py``).
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: Annotated[float, Field(ge=0)] = 2.0,
        label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        targets = smooth_binary_targets(targets, self.label_smoothing)
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, reduction="none")

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, label_smoothing={self.label_smoothing}"


@register("cls_loss", "bce")
class BCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy with logits, element-wise: ``(N, C), (N, C) float -> (N, C)``.

    ``label_smoothing`` ε maps targets ``t → t·(1 − ε) + ε/2``.
    """

    def __init__(self, label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        targets = smooth_binary_targets(targets, self.label_smoothing)
        return bce_with_logits(logits, targets, reduction="none")
