"""DropBlock (Ghiasi, Lin & Le, 2018): dropout of contiguous square regions of a feature map.

Dropping single activations barely regularises a conv net, whose neighbours carry the
same information; DropBlock drops ``block_size × block_size`` squares instead. Block
corners are drawn with probability

    γ = drop_prob / block_size² · H·W / ((H − block_size + 1)(W − block_size + 1))

over the ``(H − block_size + 1)(W − block_size + 1)`` positions where a block fits, so
that about ``drop_prob`` of the units are dropped (fewer where blocks overlap), and the
kept activations are rescaled by ``count(mask) / count_ones(mask)`` (Algorithm 1).
Identity in evaluation mode and at ``drop_prob = 0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def drop_block_gamma(drop_prob: float, block_size: int, height: int, width: int) -> float:
    """The Bernoulli rate of block corners (Ghiasi et al., eq. 1, for an H × W map)."""
    valid = (height - block_size + 1) * (width - block_size + 1)
    return drop_prob / block_size**2 * height * width / valid


def drop_block_mask(corners: Tensor, block_size: int) -> Tensor:
    """corners: (N, C, H − s + 1, W − s + 1) 0/1, the top-left corners of the dropped blocks
    → keep mask (N, C, H, W): 0 inside any ``s × s`` block ``[i, i + s) × [j, j + s)``."""
    pad = block_size - 1
    dropped = F.max_pool2d(F.pad(corners, (pad, pad, pad, pad)), block_size, stride=1)
    return 1.0 - dropped


class DropBlock2d(nn.Module):
    """``(N, C, H, W) → (N, C, H, W)``: DropBlock with ``drop_prob`` and ``block_size``
    (clamped to the map's smaller side); each channel of each sample gets its own blocks."""

    def __init__(self, drop_prob: float = 0.0, block_size: int = 7):
        super().__init__()
        if not 0 <= drop_prob < 1:
            raise ValueError(f"drop_block_prob must lie in [0, 1), got {drop_prob}")
        if block_size < 1:
            raise ValueError(f"drop_block_size must be >= 1, got {block_size}")
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0:
            return x
        height, width = x.shape[-2:]
        size = min(self.block_size, height, width)
        gamma = drop_block_gamma(self.drop_prob, size, height, width)
        shape = (*x.shape[:-2], height - size + 1, width - size + 1)
        corners = (torch.rand(shape, device=x.device) < gamma).to(x.dtype)
        keep = drop_block_mask(corners, size)
        return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"
