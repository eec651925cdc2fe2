"""MobileNetV2 (Sandler et al., 2018) from torchvision, returning multi-level features.

torchvision's ``features`` sequence is wrapped, not re-written, and cut into the
ResNet-layout stages of ``base.py``: stage 0 = ``features[0:2]`` (stride 2),
1 = ``[2:4]`` (24 ch, stride 4), 2 = ``[4:7]`` (32 ch, stride 8), 3 = ``[7:14]``
(96 ch, stride 16), 4 = ``[14:19]`` (1280 ch after the final 1×1 conv, stride 32), for
``width_mult = 1``. SSDLite (Sandler et al.) reads stages 3 and 4.
"""

from typing import Annotated

import torchvision
from pydantic import Field
from torch import nn

from tunedet.config.registry import register
from tunedet.models.backbones.base import FrozenStages, MultiLevelBackbone, check_out_indices

STAGE_BOUNDS = (0, 2, 4, 7, 14, 19)  # features[STAGE_BOUNDS[i]:STAGE_BOUNDS[i + 1]] = stage i


@register("backbone", "mobilenet_v2")
class MobileNetV2Backbone(MultiLevelBackbone):
    """MobileNetV2 (torchvision, random init): stride 16 and 32 maps (96, 1280 ch) by default.

    ``forward(x: (B, 3, H, W)) -> [(B, out_channels[i], ⌈H/strides[i]⌉, ⌈W/strides[i]⌉)]``.
    """

    def __init__(
        self,
        out_indices: tuple[int, ...] = (3, 4),
        width_mult: Annotated[float, Field(gt=0)] = 1.0,
        frozen_stages: FrozenStages = -1,
        norm_eval: bool = False,
    ):
        super().__init__()
        self.out_indices = check_out_indices(out_indices)
        features = torchvision.models.mobilenet_v2(weights=None, width_mult=width_mult).features
        last = self.out_indices[-1]
        self.layers = nn.ModuleList(
            nn.Sequential(*features[STAGE_BOUNDS[i] : STAGE_BOUNDS[i + 1]]) for i in range(last + 1)
        )
        self.out_channels = [self.layers[i][-1].out_channels for i in self.out_indices]
        self.strides = [2 ** (i + 1) for i in self.out_indices]
        self.init_freezing(frozen_stages, norm_eval)

    def stages(self) -> list[nn.Module]:
        return list(self.layers)
