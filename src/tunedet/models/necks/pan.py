"""Path Aggregation Network neck (Liu et al., 2018, PANet): FPN plus a bottom-up path.

After FPN's top-down pass gives ``P_l`` (finest first), the bottom-up path adds the finer
level back: ``N_0 = P_0``, ``N_{l+1} = conv3×3(P_{l+1} + conv3×3_stride2(N_l))``, so
localisation detail from the fine maps reaches the coarse ones in a few layers.
"""

from typing import Annotated, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.layers import ActKind, ConvNormAct, NormKind
from tunedet.models.necks.fpn import FPN


@register("neck", "pan", injected=("in_channels", "in_strides"))
class PAN(nn.Module):
    """FPN (no extra levels) + bottom-up aggregation: one ``out_channels`` map per input level.

    ``forward(feats: [(B, in_channels[l], H_l, W_l)]) -> [(B, out_channels, H_l, W_l)]``,
    finest first; ``strides`` equals ``in_strides``.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        out_channels: Annotated[int, Field(ge=1)] = 256,
        norm: NormKind = "none",
        act: ActKind | Literal["none"] = "none",
    ):
        super().__init__()
        self.fpn = FPN(in_channels, in_strides, out_channels, num_outs=len(in_channels), norm=norm)
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.strides = list(in_strides)
        self.downsample_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, stride=2, norm=norm, act=act)
            for _ in range(len(in_channels) - 1)
        )
        self.output_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm=norm, act=act)
            for _ in range(len(in_channels) - 1)
        )
        for m in [*self.downsample_convs.modules(), *self.output_convs.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        pyramid = self.fpn(feats)
        outs = [pyramid[0]]
        for level, (down, conv) in enumerate(
            zip(self.downsample_convs, self.output_convs, strict=True), start=1
        ):
            below = down(outs[-1])
            target = pyramid[level]
            if below.shape[-2:] != target.shape[-2:]:  # odd sizes: match the lateral's grid
                below = F.interpolate(below, size=target.shape[-2:], mode="nearest")
            outs.append(conv(target + below))
        return outs
