"""Numerically stable softmax and softmax cross-entropy (hard or soft targets).

``softmax(z)_i = exp(z_i) / Σ_j exp(z_j)`` overflows in float32 once a logit exceeds
~88 (float16: ~11). Subtracting the row maximum ``m`` changes nothing mathematically,
``exp(z_i − m) / Σ_j exp(z_j − m)``, and keeps every exponent ≤ 0; likewise

    log softmax(z)_i = (z_i − m) − log Σ_j exp(z_j − m),

whose sum has a term equal to 1, so the log is finite: the loss
``CE = −Σ_i q_i · log softmax(z)_i`` is finite for any finite logits. Half-precision
logits are computed in float32 (``z − max`` can leave float16's range); log-probabilities
and losses come back as float32, probabilities in the input dtype.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.losses.reduction import Reduction, reduce_loss


def _upcast(logits: Tensor) -> Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def stable_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """``softmax`` along ``dim`` with the maximum subtracted first."""
    z = _upcast(logits)
    shifted = z - z.amax(dim=dim, keepdim=True).detach()
    exp = shifted.exp()
    return (exp / exp.sum(dim=dim, keepdim=True)).to(logits.dtype)


def stable_log_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """``log softmax`` along ``dim``: ``(z − max) − log Σ exp(z − max)``."""
    z = _upcast(logits)
    shifted = z - z.amax(dim=dim, keepdim=True).detach()
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


def softmax_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    reduction: Reduction = "none",
    weight: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Softmax cross-entropy over the last dim: ``logits (..., K)`` →  ``(...)``.

    ``targets``: class indices ``(...)`` long, or a distribution ``(..., K)`` float (soft
    targets, e.g. label smoothing; rows summing to 1). ``weight (...)`` per row;
    ``reduction``/``normalizer`` as in ``reduce_loss``.
    """
    log_p = stable_log_softmax(logits, dim=-1)
    if targets.dtype in (torch.int64, torch.int32, torch.uint8, torch.int16, torch.int8):
        loss = -log_p.gather(-1, targets.long()[..., None])[..., 0]
    else:
        loss = -(targets.to(log_p.dtype) * log_p).sum(dim=-1)
    return reduce_loss(loss, reduction, weight, normalizer)


def smooth_one_hot(targets: Tensor, eps: float) -> Tensor:
    """Softmax label smoothing (Szegedy et al., 2016) of one-hot rows ``(..., K)``:
    ``1 − eps`` on the target class, ``eps / (K − 1)`` on each of the others (rows still
    sum to 1): ``t·(1 − eps) + (1 − t)·eps / (K − 1)``."""
    if eps == 0:
        return targets
    num_classes = targets.shape[-1]
    if num_classes < 2:
        raise ValueError(f"label smoothing needs at least 2 classes, got {num_classes}")
    return targets * (1.0 - eps) + (1.0 - targets) * (eps / (num_classes - 1))


@register("cls_loss", "softmax_ce")
class SoftmaxCrossEntropyLoss(nn.Module):
    """Softmax cross-entropy, element-wise: ``(logits (N, C), targets (N, C)) -> (N, C)``
    with ``−t_c · log softmax(z)_c`` (rows sum to the cross-entropy).

    For heads with a background logit among their ``C`` (SSD, R-CNN) or whose class loss
    sees the positives only (YOLOv3); dense sigmoid heads without one (RetinaNet) reject
    it: a background anchor's all-zero target row would give it no loss at all.
    ``label_smoothing`` ε: one-hot targets become ``1 − ε`` on the class and ``ε/(C − 1)``
    on each other logit (the background logit counts as one).
    """

    needs_background_logit = True

    def __init__(self, label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_p = stable_log_softmax(logits, dim=-1)
        targets = smooth_one_hot(targets.to(log_p.dtype), self.label_smoothing)
        return -targets * log_p

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
