"""Label smoothing (Szegedy et al. 2016) for softmax and sigmoid classifiers.

Softmax heads: the one-hot target becomes ``q_i = 1 − ε`` for the true
class and ``ε/(K − 1)`` for each of the other ``K − 1`` classes, so the target still
sums to 1 and the true class keeps exactly ``1 − ε``.

Sigmoid heads (focal, BCE) solve ``C`` independent binary problems; each binary
target is smoothed towards the uniform binary distribution,
``t → t·(1 − ε) + ε/2``: positives become ``1 − ε/2``, negatives ``ε/2``. For two
classes this is Szegedy's uniform-mixing form ``(1 − ε)·onehot + ε/K``, and it maps
the symmetric range ``[0, 1]`` onto ``[ε/2, 1 − ε/2]`` without favouring either side,
which is why it is used here rather than the ``ε/(K − 1)`` form (that would give
``1 − ε`` / ``ε``, the same map with ``2ε``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tunedet.losses.cross_entropy import softmax_cross_entropy


def label_smoothing_targets(
    labels: Tensor, num_classes: int, eps: float, dtype: torch.dtype = torch.float32
) -> Tensor:
    """labels: (N,) long in ``[0, num_classes)`` → soft targets (N, num_classes) with
    ``1 − eps`` at the label and ``eps/(num_classes − 1)`` elsewhere (rows sum to 1)."""
    if not 0 <= eps < 1:
        raise ValueError(f"label smoothing eps must lie in [0, 1), got {eps}")
    if num_classes < 2:
        raise ValueError(f"label smoothing needs num_classes >= 2, got {num_classes}")
    off = eps / (num_classes - 1)
    targets = torch.full((*labels.shape, num_classes), off, dtype=dtype, device=labels.device)
    return targets.scatter_(-1, labels.long().unsqueeze(-1), 1.0 - eps)


def smooth_binary_targets(targets: Tensor, eps: float) -> Tensor:
    """Sigmoid-form smoothing of binary (or soft) targets: ``t·(1 − eps) + eps/2``."""
    if eps == 0:
        return targets
    return targets * (1.0 - eps) + 0.5 * eps


class LabelSmoothingCrossEntropy(nn.Module):
    """Softmax cross-entropy with label smoothing: ``(logits (N, K), labels (N,) long) -> (N,)``.

    Not a ``cls_loss`` of the dense sigmoid detectors (those take ``(N, C)`` binary
    targets; use their ``label_smoothing`` knob); for softmax classification heads.
    """

    def __init__(self, eps: float = 0.1) -> None:
        super().__init__()
        if not 0 <= eps < 1:
            raise ValueError(f"label smoothing eps must lie in [0, 1), got {eps}")
        self.eps = eps

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        targets = label_smoothing_targets(labels, logits.shape[-1], self.eps, logits.dtype)
        return softmax_cross_entropy(logits, targets)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
