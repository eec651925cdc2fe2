"""CornerNet's head (Law & Deng, 2018): corner pooling, then per corner type a heatmap
(one channel per class), a 1-d embedding and a 2-d sub-cell offset.

Corner pooling: a top-left corner usually lies outside the object, so its features must
come from the object's boundary below it and to its right; at ``(i, j)``

    top_ij  = max_{k ≥ i} f_kj        (everything below)
    left_ij = max_{k ≥ j} g_ik        (everything to the right)

and the top-left module adds ``top(f) + left(g)``; the bottom-right one uses
``bottom_ij = max_{k ≤ i} f_kj`` and ``right_ij = max_{k ≤ j} g_ik``. The pooling
module (CornerNet Fig. 7): two 3×3 conv-BN-ReLU feed the two pools, their sum goes through
a 3×3 conv-BN, is added to a 1×1 conv-BN shortcut of the input, ReLU, then a 3×3
conv-BN-ReLU.
"""

from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

import torch
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.losses.corner import focal_prior_bias
from tunedet.models.layers import ConvNormAct, NormKind, make_norm

PoolDirection = Literal["top", "left", "bottom", "right"]


def corner_pool(x: Tensor, direction: PoolDirection) -> Tensor:
    """x: (B, C, H, W) → running maximum towards ``direction``'s side: ``top`` takes the
    max over the rows at and below each cell, ``left`` over the columns at and to its
    right, ``bottom`` at and above, ``right`` at and to its left."""
    dim = 2 if direction in ("top", "bottom") else 3
    if direction in ("top", "left"):
        return x.flip(dim).cummax(dim).values.flip(dim)
    return x.cummax(dim).values


class CornerPooling(nn.Module):
    """``(B, C, H, W) → (B, C, H, W)``: CornerNet's corner pooling module for the corner
    whose pools are ``directions`` (``("top", "left")`` or ``("bottom", "right")``)."""

    def __init__(
        self, channels: int, directions: tuple[PoolDirection, PoolDirection], norm: NormKind
    ):
        super().__init__()
        self.directions = directions
        self.branch_a = ConvNormAct(channels, channels, 3, norm=norm)
        self.branch_b = ConvNormAct(channels, channels, 3, norm=norm)
        self.merge = ConvNormAct(channels, channels, 3, norm=norm, act="none")
        self.shortcut = ConvNormAct(channels, channels, 1, norm=norm, act="none")
        self.out = ConvNormAct(channels, channels, 3, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        first, second = self.directions
        pooled = corner_pool(self.branch_a(x), first) + corner_pool(self.branch_b(x), second)
        return self.out(torch.relu(self.merge(pooled) + self.shortcut(x)))


class CornerMaps(NamedTuple):
    """The head's outputs (a tuple, so that tracing and ONNX export take it)."""

    tl_heat: Tensor  # (B, C, H, W) logits
    br_heat: Tensor
    tl_embed: Tensor  # (B, H, W)
    br_embed: Tensor
    tl_offset: Tensor  # (B, 2, H, W) (x, y) in cells
    br_offset: Tensor


def _prediction(channels: int, outputs: int) -> nn.Sequential:
    """3×3 conv + ReLU + 1×1 conv (CornerNet's output branches)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, outputs, 1),
    )


@register("head", "cornernet", injected=("in_channels", "num_classes"))
class CornerNetHead(nn.Module):
    """Corner pooling + heatmap/embedding/offset branches for top-left and bottom-right corners.

    ``forward(feats)`` reads the first (finest) map ``(B, in_channels, H, W)`` and returns
    ``CornerMaps`` of ``tl_heat``/``br_heat`` ``(B, C, H, W)`` logits, ``tl_embed``/``br_embed``
    ``(B, H, W)`` and ``tl_offset``/``br_offset`` ``(B, 2, H, W)`` (x, y in cells).
    ``prior_prob``: the heatmaps' starting probability (CornerNet's bias −2.19 is 0.1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        feat_channels: Annotated[int, Field(ge=1)] = 64,
        norm: NormKind = "bn",
        prior_prob: Annotated[float, Field(gt=0, lt=1)] = 0.1,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.reduce = (
            nn.Identity()
            if in_channels == feat_channels
            else nn.Sequential(
                nn.Conv2d(in_channels, feat_channels, 1, bias=False), make_norm(norm, feat_channels)
            )
        )
        self.tl_pool = CornerPooling(feat_channels, ("top", "left"), norm)
        self.br_pool = CornerPooling(feat_channels, ("bottom", "right"), norm)
        self.tl_heat = _prediction(feat_channels, num_classes)
        self.br_heat = _prediction(feat_channels, num_classes)
        self.tl_embed = _prediction(feat_channels, 1)
        self.br_embed = _prediction(feat_channels, 1)
        self.tl_offset = _prediction(feat_channels, 2)
        self.br_offset = _prediction(feat_channels, 2)
        for heat in (self.tl_heat, self.br_heat):
            nn.init.constant_(heat[-1].bias, focal_prior_bias(prior_prob))

    def forward(self, feats: list[Tensor]) -> CornerMaps:
        x = self.reduce(feats[0])
        tl, br = self.tl_pool(x), self.br_pool(x)
        return CornerMaps(
            tl_heat=self.tl_heat(tl),
            br_heat=self.br_heat(br),
            tl_embed=self.tl_embed(tl)[:, 0],
            br_embed=self.br_embed(br)[:, 0],
            tl_offset=self.tl_offset(tl),
            br_offset=self.br_offset(br),
        )
