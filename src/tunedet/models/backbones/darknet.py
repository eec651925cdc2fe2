"""Darknet-53 (Redmon & Farhadi, YOLOv3, 2018) and the YOLOv3-tiny trunk.

Darknet-53: a 3×3 conv (32) at stride 1, then five stages, each a stride-2 3×3 conv
doubling the width followed by ``n`` residual blocks ``x + conv3×3(conv1×1(x, c/2), c)``
(``n`` = 1, 2, 8, 8, 4; widths 64 … 1024); BatchNorm and LeakyReLU(0.1) after every conv.

Stage indices follow the ResNet layout of ``base.py``: stage 0 (the stem) is the
first conv *and* the first stride-2 stage (stride 2), stages 1..4 have strides 4, 8,
16, 32, so ``out_indices=(2, 3, 4)`` returns the maps YOLOv3 uses (256, 512, 1024
channels at strides 8, 16, 32).

Tiny Darknet (the trunk of ``yolov3-tiny.cfg``): 3×3 convs separated by 2×2 max-pools,
widths 16, 32, 64, 128, 256, 512, 1024; the last stage adds yolov3-tiny's stride-1
max-pool and the widest 3×3 conv.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.backbones.base import FrozenStages, MultiLevelBackbone, check_out_indices
from tunedet.models.layers import ActKind, ConvNormAct, NormKind

DARKNET53_BLOCKS = (1, 2, 8, 8, 4)
DARKNET53_WIDTHS = (64, 128, 256, 512, 1024)


class DarknetResidual(nn.Module):
    """``x + conv3×3(conv1×1(x) → channels/2) → channels``."""

    def __init__(self, channels: int, norm: NormKind, act: ActKind):
        super().__init__()
        self.reduce = ConvNormAct(channels, channels // 2, 1, norm=norm, act=act)
        self.expand = ConvNormAct(channels // 2, channels, 3, norm=norm, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.expand(self.reduce(x))


class _Trunk(MultiLevelBackbone):
    """``stages()`` of trunks stored as ``self.stem`` + ``self.layers`` (the base class runs them)."""

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


@register("backbone", "darknet53")
class Darknet53(_Trunk):
    """Darknet-53, YOLOv3's backbone: C3–C5 with 256/512/1024 channels by default.

    ``forward(x: (B, 3, H, W)) -> [(B, out_channels[i], H/strides[i], W/strides[i])]``.
    """

    def __init__(
        self,
        out_indices: tuple[int, ...] = (2, 3, 4),
        norm: NormKind = "bn",
        act: ActKind = "leaky_relu",
        frozen_stages: FrozenStages = -1,
        norm_eval: bool = False,
    ):
        super().__init__()
        self.out_indices = check_out_indices(out_indices)
        stages = []
        in_channels = 32
        for width, blocks in zip(DARKNET53_WIDTHS, DARKNET53_BLOCKS, strict=True):
            layers = [ConvNormAct(in_channels, width, 3, stride=2, norm=norm, act=act)]
            layers += [DarknetResidual(width, norm, act) for _ in range(blocks)]
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stem = nn.Sequential(ConvNormAct(3, 32, 3, norm=norm, act=act), stages[0])
        self.layers = nn.ModuleList(stages[1 : self.out_indices[-1] + 1])
        self.out_channels = [DARKNET53_WIDTHS[i] for i in self.out_indices]
        self.strides = [2 ** (i + 1) for i in self.out_indices]
        self._init_weights()
        self.init_freezing(frozen_stages, norm_eval)


@register("backbone", "tiny_darknet")
class TinyDarknet(_Trunk):
    """YOLOv3-tiny's trunk (3×3 convs + max-pools, widths 16–1024), strides 8/16/32.

    ``widths``: the seven conv widths (stem conv, conv after the first pool, then stages
    1–4; stage 4 has two: before and after the stride-1 max-pool).
    ``forward(x: (B, 3, H, W)) -> [(B, out_channels[i], ⌈H/strides[i]⌉, ⌈W/strides[i]⌉)]``.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024),
        out_indices: tuple[int, ...] = (2, 3, 4),
        norm: NormKind = "bn",
        act: ActKind = "leaky_relu",
        frozen_stages: FrozenStages = -1,
        norm_eval: bool = False,
    ):
        super().__init__()
        if len(widths) != 7 or min(widths) < 1:
            raise ValueError(f"widths needs 7 positive entries, got {widths}")
        self.out_indices = check_out_indices(out_indices)

        def conv(c_in: int, c_out: int) -> ConvNormAct:
            return ConvNormAct(c_in, c_out, 3, norm=norm, act=act)

        def pool() -> nn.MaxPool2d:
            return nn.MaxPool2d(2, 2, ceil_mode=True)

        self.stem = nn.Sequential(conv(3, widths[0]), pool(), conv(widths[0], widths[1]))
        stages = [nn.Sequential(pool(), conv(widths[i], widths[i + 1])) for i in range(1, 4)]
        stages.append(
            nn.Sequential(
                pool(),
                conv(widths[4], widths[5]),
                StrideOneMaxPool(),
                conv(widths[5], widths[6]),
            )
        )
        self.layers = nn.ModuleList(stages[: self.out_indices[-1]])
        stage_widths = (widths[2], widths[3], widths[4], widths[6])
        self.out_channels = [stage_widths[i - 1] for i in self.out_indices]
        self.strides = [2 ** (i + 1) for i in self.out_indices]
        self._init_weights()
        self.init_freezing(frozen_stages, norm_eval)


class StrideOneMaxPool(nn.Module):
    """yolov3-tiny's ``maxpool size=2 stride=1``: pad right/bottom by 1, keep the size."""

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)
