"""YOLOv3's neck (Redmon & Farhadi, 2018): top-down, concatenation instead of FPN's sum.

From the deepest input down: a *detection block* (1×1 c, 3×3 2c, 1×1 c, 3×3 2c, 1×1 c) gives
that level's output of ``c = out_channels[l]`` channels; a 1×1 conv to ``c/2`` and a 2×
nearest upsample of it are concatenated with the next finer input, which feeds the next
detection block. With ``spp`` (YOLOv3-SPP) the deepest block's third conv is followed by
max-pools 5/9/13 concatenated and fused back to ``c`` channels.
"""

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.layers import ActKind, ConvNormAct, NormKind
from tunedet.models.necks.spp import SPPBlock


class DetectionBlock(nn.Sequential):
    """Five alternating convs ``1×1 c, 3×3 2c, 1×1 c, [SPP], 3×3 2c, 1×1 c``: ``in → c``."""

    def __init__(self, in_channels: int, channels: int, spp: bool, norm: NormKind, act: ActKind):
        layers: list[nn.Module] = [
            ConvNormAct(in_channels, channels, 1, norm=norm, act=act),
            ConvNormAct(channels, channels * 2, 3, norm=norm, act=act),
            ConvNormAct(channels * 2, channels, 1, norm=norm, act=act),
        ]
        if spp:
            layers.append(SPPBlock(channels, channels, norm=norm, act=act))
        layers += [
            ConvNormAct(channels, channels * 2, 3, norm=norm, act=act),
            ConvNormAct(channels * 2, channels, 1, norm=norm, act=act),
        ]
        super().__init__(*layers)


@register("neck", "yolov3", injected=("in_channels", "in_strides"))
class YOLOv3Neck(nn.Module):
    """YOLOv3 neck: one output per input level, ``out_channels[l]`` channels, finest first.

    ``forward(feats: [(B, in_channels[l], H_l, W_l)]) -> [(B, out_channels[l], H_l, W_l)]``;
    ``strides`` equals ``in_strides``. Default widths: Darknet-53's 128/256/512.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        out_channels: tuple[Annotated[int, Field(ge=2)], ...] = (128, 256, 512),
        spp: bool = False,
        norm: NormKind = "bn",
        act: ActKind = "leaky_relu",
    ):
        super().__init__()
        if len(out_channels) != len(in_channels):
            raise ValueError(
                f"out_channels {tuple(out_channels)} needs one entry per input level "
                f"(the backbone gives {len(in_channels)}: {list(in_channels)})"
            )
        self.in_channels = list(in_channels)
        self.out_channels = list(out_channels)
        self.strides = list(in_strides)
        levels = len(in_channels)
        self.blocks = nn.ModuleList()
        self.reduce = nn.ModuleList()  # 1×1 to c/2 before upsampling, from level l+1 to l
        for level in range(levels):
            c = out_channels[level]
            c_in = in_channels[level]
            if level < levels - 1:
                c_in += out_channels[level + 1] // 2
            self.blocks.append(DetectionBlock(c_in, c, spp and level == levels - 1, norm, act))
        for level in range(levels - 1):
            self.reduce.append(
                ConvNormAct(
                    out_channels[level + 1], out_channels[level + 1] // 2, 1, norm=norm, act=act
                )
            )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"YOLOv3Neck expects {len(self.in_channels)} maps, got {len(feats)}")
        outs: list[Tensor] = [feats[-1]] * len(feats)
        x = self.blocks[-1](feats[-1])
        outs[-1] = x
        for level in range(len(feats) - 2, -1, -1):
            up = F.interpolate(self.reduce[level](x), size=feats[level].shape[-2:], mode="nearest")
            x = self.blocks[level](torch.cat([up, feats[level]], dim=1))
            outs[level] = x
        return outs
