"""Spatial pyramid pooling as YOLOv3-SPP uses it (He et al., 2014; Redmon's yolov3-spp.cfg).

``SPP(x) = conv1×1(concat(x, maxpool_5(x), maxpool_9(x), maxpool_13(x)))``: stride-1 max-pools
("same" padding) widen the receptive field of the deepest map without changing its size.
"""

import torch
from torch import Tensor, nn

from tunedet.models.layers import ActKind, ConvNormAct, NormKind


class SPPBlock(nn.Module):
    """``(B, channels, H, W) -> (B, out_channels, H, W)``: pooled copies concatenated, fused."""

    def __init__(
        self,
        channels: int,
        out_channels: int,
        pool_sizes: tuple[int, ...] = (5, 9, 13),
        norm: NormKind = "bn",
        act: ActKind = "leaky_relu",
    ):
        super().__init__()
        if any(k % 2 == 0 or k < 1 for k in pool_sizes):
            raise ValueError(f"SPP pool sizes must be odd and positive, got {pool_sizes}")
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, padding=k // 2) for k in pool_sizes)
        self.fuse = ConvNormAct(
            channels * (len(pool_sizes) + 1), out_channels, 1, norm=norm, act=act
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([x, *(pool(x) for pool in self.pools)], dim=1))
