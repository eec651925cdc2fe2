"""CSP-Darknet: Darknet with Cross Stage Partial stages (Wang et al., CSPNet, 2020), as in
YOLOv5 (v6.0 layout) and, with a Focus stem, YOLOX.

A CSP block (YOLOv5's ``C3``) splits its input into two 1×1 projections of half the
output width; one goes through ``n`` bottlenecks ``x + conv3×3(conv1×1(x))``, the other
bypasses them, and a 1×1 conv fuses their concatenation:

    y = conv3(cat(bottlenecks(conv1(x)), conv2(x)))

so only half the channels pay for the deep path and the gradient reaches the stage's
input by a short route. Layout: a 6×6 stride-2 conv stem (stage 0), then four stages of a
stride-2 3×3 conv followed by a CSP block; the last stage ends with SPPF (three serial
5×5 max-pools, the same maps as SPP's parallel 5/9/13 pools). Widths ``64·w … 1024·w``
and depths ``round(3·d), round(6·d), round(9·d), round(3·d)`` (at least 1) for width and
depth multiples ``w`` and ``d``: YOLOv5-s is ``w = 0.5, d = 0.33``.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.backbones.base import FrozenStages, MultiLevelBackbone, check_out_indices
from tunedet.models.layers import ActKind, ConvNormAct, NormKind
from tunedet.models.regularization import DropBlock2d

CSP_BASE_WIDTHS = (64, 128, 256, 512, 1024)
CSP_BASE_DEPTHS = (3, 6, 9, 3)


class CSPBottleneck(nn.Module):
    """``x + conv3×3(conv1×1(x))`` (the residual only with ``shortcut``), width kept."""

    def __init__(self, channels: int, shortcut: bool, norm: NormKind, act: ActKind):
        super().__init__()
        self.reduce = ConvNormAct(channels, channels, 1, norm=norm, act=act)
        self.conv = ConvNormAct(channels, channels, 3, norm=norm, act=act)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(self.reduce(x))
        return x + y if self.shortcut else y


class CSPBlock(nn.Module):
    """YOLOv5's ``C3``: ``conv3(cat(bottlenecks(conv1(x)), conv2(x)))``; ``conv1``/``conv2``
    project ``in_channels`` to ``out_channels / 2``, ``conv3`` fuses back to ``out_channels``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        shortcut: bool = True,
        norm: NormKind = "bn",
        act: ActKind = "silu",
    ):
        super().__init__()
        hidden = out_channels // 2
        self.conv1 = ConvNormAct(in_channels, hidden, 1, norm=norm, act=act)
        self.conv2 = ConvNormAct(in_channels, hidden, 1, norm=norm, act=act)
        self.blocks = nn.Sequential(
            *(CSPBottleneck(hidden, shortcut, norm, act) for _ in range(num_blocks))
        )
        self.conv3 = ConvNormAct(2 * hidden, out_channels, 1, norm=norm, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat([self.blocks(self.conv1(x)), self.conv2(x)], dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast (YOLOv5): ``conv2(cat(x', p(x'), p²(x'), p³(x')))``
    with ``x' = conv1(x)`` (half width) and ``p`` a 5×5 stride-1 max-pool; ``p²``/``p³``
    equal SPP's 9×9/13×13 pools."""

    def __init__(self, channels: int, norm: NormKind = "bn", act: ActKind = "silu"):
        super().__init__()
        hidden = channels // 2
        self.conv1 = ConvNormAct(channels, hidden, 1, norm=norm, act=act)
        self.conv2 = ConvNormAct(4 * hidden, channels, 1, norm=norm, act=act)

    def forward(self, x: Tensor) -> Tensor:
        pooled = [self.conv1(x)]
        for _ in range(3):
            pooled.append(F.max_pool2d(pooled[-1], 5, stride=1, padding=2))
        return self.conv2(torch.cat(pooled, dim=1))


def scaled_depth(depth: int, multiple: float) -> int:
    """YOLOv5's depth scaling: ``max(round(depth · multiple), 1)``."""
    return max(round(depth * multiple), 1)


@register("backbone", "csp_darknet")
class CSPDarknet(MultiLevelBackbone):
    """CSP-Darknet (YOLOv5 v6.0): CSP stages, SPPF; C3–C5 with 256·w/512·w/1024·w channels.

    ``width_multiple``/``depth_multiple`` scale the widths 64…1024 and the stage depths
    3/6/9/3 (YOLOv5 n/s/m/l/x: 0.25/0.33, 0.5/0.33, 0.75/0.67, 1/1, 1.25/1.33).
    ``drop_block_prob`` > 0 applies DropBlock to the outputs of stages 3 and 4 in training.
    ``forward(x: (B, 3, H, W)) -> [(B, out_channels[i], H/strides[i], W/strides[i])]``.
    """

    def __init__(
        self,
        width_multiple: Annotated[float, Field(gt=0)] = 0.5,
        depth_multiple: Annotated[float, Field(gt=0)] = 0.33,
        out_indices: tuple[int, ...] = (2, 3, 4),
        norm: NormKind = "bn",
        act: ActKind = "silu",
        frozen_stages: FrozenStages = -1,
        norm_eval: bool = False,
        drop_block_prob: Annotated[float, Field(ge=0, lt=1)] = 0.0,
        drop_block_size: Annotated[int, Field(ge=1)] = 7,
    ):
        super().__init__()
        self.out_indices = check_out_indices(out_indices)
        widths = [max(round(w * width_multiple), 1) for w in CSP_BASE_WIDTHS]
        depths = [scaled_depth(d, depth_multiple) for d in CSP_BASE_DEPTHS]
        self.stem = ConvNormAct(3, widths[0], 6, stride=2, norm=norm, act=act)
        self.stem.conv.padding = (2, 2)  # YOLOv5's 6×6/2 stem: padding 2, output H/2
        stages = []
        for i in range(4):
            layers = [
                ConvNormAct(widths[i], widths[i + 1], 3, stride=2, norm=norm, act=act),
                CSPBlock(widths[i + 1], widths[i + 1], depths[i], True, norm, act),
            ]
            if i == 3:
                layers.append(SPPF(widths[4], norm, act))
            stages.append(nn.Sequential(*layers))
        self.layers = nn.ModuleList(stages[: self.out_indices[-1]])
        self.drop_block = DropBlock2d(drop_block_prob, drop_block_size)
        self.out_channels = [widths[i] for i in self.out_indices]
        self.strides = [2 ** (i + 1) for i in self.out_indices]
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # YOLOv5's BN: eps 1e-3, momentum 0.03
                m.eps, m.momentum = 1e-3, 0.03
        self.init_freezing(frozen_stages, norm_eval)

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, stage in enumerate(self.stages()):
            x = stage(x)
            if i >= 3:
                x = self.drop_block(x)
            if i in self.out_indices:
                outs.append(x)
        return outs
