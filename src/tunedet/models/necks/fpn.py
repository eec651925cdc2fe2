"""Feature Pyramid Network (Lin et al. 2017) with RetinaNet's P6/P7 or Faster R-CNN's P6.

``P_i = conv3x3(lateral1x1(C_i) + upsample(P_{i+1} before its 3×3))``, top-down
with nearest upsampling to the lateral's exact size (odd input sizes work).
Extra levels beyond the inputs are stride-2 3×3 convs: the first from C5
(``extra_source="input"``) or P5 (``"output"``), the next ones from the level
below, with a ReLU before them when ``relu_before_extra`` (RetinaNet's P7).
``extra_type="maxpool"`` makes them ``max_pool2d(kernel 1, stride 2)`` of the level
below instead, without weights: the FPN paper's P6 for the RPN (Detectron,
torchvision's ``LastLevelMaxPool``).

Weight init (``init``): ``xavier_uniform`` (mmdetection's), or ``kaiming_uniform``:
``kaiming_uniform_(a=1)``, i.e. ``U(±sqrt(3 / fan_in))``, torchvision's FPN and
Detectron2's ``c2_xavier_fill``; biases start at 0 either way. ``zero_init_lateral``
starts the lateral 1×1 convs of every level but the top at 0 (Detectron's
``FPN.ZERO_INIT_LATERAL``): each ``P_i`` then begins as the upsampled top level.
"""

from typing import Annotated, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.layers import ConvNormAct, NormKind


@register("neck", "fpn", injected=("in_channels", "in_strides"))
class FPN(nn.Module):
    """FPN: ``len(in_channels)`` backbone maps → ``num_outs`` maps of ``out_channels``.

    ``forward(feats: [(B, in_channels[i], H_i, W_i)]) -> [(B, out_channels, H_l, W_l)]``,
    finest first; ``strides`` lists each output's stride.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        out_channels: Annotated[int, Field(ge=1)] = 256,
        num_outs: Annotated[int, Field(ge=1)] = 5,
        extra_source: Literal["input", "output"] = "output",
        relu_before_extra: bool = True,
        extra_type: Literal["conv", "maxpool"] = "conv",
        norm: NormKind = "none",
        init: Literal["xavier_uniform", "kaiming_uniform"] = "xavier_uniform",
        zero_init_lateral: bool = False,
    ):
        super().__init__()
        if len(in_channels) != len(in_strides) or not in_channels:
            raise ValueError(
                f"in_channels {in_channels} and in_strides {in_strides} must be non-empty "
                "and of equal length"
            )
        if num_outs < len(in_channels):
            raise ValueError(
                f"num_outs ({num_outs}) must be >= the number of input levels ({len(in_channels)})"
            )
        if extra_type == "maxpool" and extra_source == "input":
            raise ValueError(
                "model.neck.extra_source: input needs extra_type: conv (a max-pooled level is "
                "subsampled from the output level below it)"
            )
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.extra_source = extra_source
        self.relu_before_extra = relu_before_extra
        self.extra_type = extra_type
        num_extra = num_outs - len(in_channels)
        self.strides = list(in_strides) + [in_strides[-1] * 2 ** (k + 1) for k in range(num_extra)]

        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm=norm, act="none") for c in in_channels
        )
        self.output_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm=norm, act="none") for _ in in_channels
        )
        self.extra_convs = nn.ModuleList()
        for k in range(num_extra if extra_type == "conv" else 0):
            source_channels = (
                in_channels[-1] if k == 0 and extra_source == "input" else out_channels
            )
            self.extra_convs.append(
                ConvNormAct(source_channels, out_channels, 3, stride=2, norm=norm, act="none")
            )
        self._init_weights(init)
        if zero_init_lateral:  # Detectron: add_topdown_lateral's ConstantFill(0)
            for lateral in self.lateral_convs[:-1]:
                for param in lateral.parameters():
                    nn.init.zeros_(param)

    def _init_weights(self, init: str) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if init == "kaiming_uniform":
                    nn.init.kaiming_uniform_(m.weight, a=1)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.output_convs, laterals, strict=True)]
        if self.extra_type == "maxpool":
            for _ in range(self.num_outs - len(outs)):
                outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
            return outs
        for k, conv in enumerate(self.extra_convs):
            if k == 0:
                source = feats[-1] if self.extra_source == "input" else outs[-1]
            else:
                source = F.relu(outs[-1]) if self.relu_before_extra else outs[-1]
            outs.append(conv(source))
        return outs
