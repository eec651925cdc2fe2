"""ResNet-18/34/50 from torchvision, returning C2..C5 feature maps.

The torchvision network is wrapped, not re-written: its stem and
``layer1..layer4`` are kept under their torchvision names (so a torchvision
state dict loads), ``avgpool``/``fc`` and the stages after the last requested
one are dropped. Stage indices: 0 = stem (conv1+bn1), 1..4 = layer1..layer4
(C2..C5, strides 4, 8, 16, 32).
"""

from functools import partial
from typing import Literal

import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from tunedet.config.registry import register
from tunedet.models.backbones.base import FrozenStages, MultiLevelBackbone, check_out_indices
from tunedet.models.layers import make_norm

ResNetNorm = Literal["bn", "frozen_bn", "gn"]

_BUILDERS = {
    18: torchvision.models.resnet18,
    34: torchvision.models.resnet34,
    50: torchvision.models.resnet50,
}
_STAGE_CHANNELS = {
    18: [64, 128, 256, 512],
    34: [64, 128, 256, 512],
    50: [256, 512, 1024, 2048],
}


def _norm_layer(norm: ResNetNorm):
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "gn":
        return partial(make_norm, "gn")
    raise ValueError(f"unknown ResNet norm '{norm}' (choices: bn, frozen_bn, gn)")


class ResNetBackbone(MultiLevelBackbone):
    """torchvision ResNet (random init) → list of feature maps for ``out_indices``.

    ``forward(x: (B, 3, H, W)) -> [(B, out_channels[i], H/strides[i], W/strides[i])]``.
    """

    def __init__(
        self,
        depth: Literal[18, 34, 50],
        out_indices: tuple[int, ...] = (2, 3, 4),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        norm: ResNetNorm = "bn",
    ):
        super().__init__()
        if depth not in _BUILDERS:
            raise ValueError(f"ResNet depth must be one of {sorted(_BUILDERS)}, got {depth}")
        self.out_indices = check_out_indices(out_indices)
        net = _BUILDERS[depth](weights=None, norm_layer=_norm_layer(norm))
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.num_stages = self.out_indices[-1]
        for i in range(1, self.num_stages + 1):
            self.add_module(f"layer{i}", getattr(net, f"layer{i}"))
        self.out_channels = [_STAGE_CHANNELS[depth][i - 1] for i in self.out_indices]
        self.strides = [2 ** (i + 1) for i in self.out_indices]
        self.init_freezing(frozen_stages, norm_eval)

    def stages(self) -> list[nn.Module]:
        stem = nn.ModuleList([self.conv1, self.bn1])
        return [stem] + [getattr(self, f"layer{i}") for i in range(1, self.num_stages + 1)]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


@register("backbone", "resnet18")
def resnet18(
    out_indices: tuple[int, ...] = (2, 3, 4),
    frozen_stages: FrozenStages = -1,
    norm_eval: bool = False,
    norm: ResNetNorm = "bn",
) -> ResNetBackbone:
    """ResNet-18 (torchvision, random init): C3–C5 by default, channels 128/256/512."""
    return ResNetBackbone(18, out_indices, frozen_stages, norm_eval, norm)


@register("backbone", "resnet34")
def resnet34(
    out_indices: tuple[int, ...] = (2, 3, 4),
    frozen_stages: FrozenStages = -1,
    norm_eval: bool = False,
    norm: ResNetNorm = "bn",
) -> ResNetBackbone:
    """ResNet-34 (torchvision, random init): C3–C5 by default, channels 128/256/512."""
    return ResNetBackbone(34, out_indices, frozen_stages, norm_eval, norm)


@register("backbone", "resnet50")
def resnet50(
    out_indices: tuple[int, ...] = (2, 3, 4),
    frozen_stages: FrozenStages = -1,
    norm_eval: bool = False,
    norm: ResNetNorm = "bn",
) -> ResNetBackbone:
    """ResNet-50 (torchvision, random init): C3–C5 by default, channels 512/1024/2048."""
    return ResNetBackbone(50, out_indices, frozen_stages, norm_eval, norm)
