"""The layout contract between dense heads and anchor/point generators.

A level's raw prediction map ``(B, A*K, H, W)`` holds, at channel ``a*K + k``,
output ``k`` of anchor ``a``. Flattened predictions are ordered per level, then
``y``, then ``x``, then anchor ``a`` innermost — the order in which the anchor
generator lists its anchors — so row ``(y*W + x)*A + a`` of a level's block is
anchor ``a`` at cell ``(y, x)``.
"""

import torch
from torch import Tensor


def flatten_level(pred: Tensor, num_outputs: int) -> Tensor:
    """``(B, A*K, H, W)`` → ``(B, H*W*A, K)`` in (y, x, a) order, ``K = num_outputs``."""
    b, channels, h, w = pred.shape
    a = channels // num_outputs
    return pred.view(b, a, num_outputs, h, w).permute(0, 3, 4, 1, 2).reshape(b, h * w * a, -1)


def concat_levels(preds: list[Tensor], num_outputs: int) -> Tensor:
    """Per-level ``(B, A*K, H_l, W_l)`` maps → ``(B, Σ H_l*W_l*A, K)``, finest level first."""
    return torch.cat([flatten_level(p, num_outputs) for p in preds], dim=1)
