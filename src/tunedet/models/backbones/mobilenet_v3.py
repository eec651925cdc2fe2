"""MobileNetV3-Large (Howard et al., 2019) from torchvision, cut as SSDLite reads it.

torchvision's ``features`` are wrapped, not re-written, and split where torchvision's
``ssdlite320_mobilenet_v3_large`` splits them: map 0 is the output of the 1×1 expansion
conv of the last stride-2 block ("C4", 672 ch, stride 16), map 1 the end of the network
(the final 1×1 conv, 480 ch with ``reduced_tail``, stride 32). The two parts keep
torchvision's names (``features.0``, ``features.1``), so its tensors load unrenamed.
``reduced_tail`` halves the channels of the last stage (torchvision's option, used by
SSDLite). BatchNorm with eps 0.001 and ``bn_momentum`` (SSDLite: 0.03).
"""

from functools import partial
from typing import Annotated

import torchvision
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.backbones.base import FrozenStages, MultiLevelBackbone


@register("backbone", "mobilenet_v3_large")
class MobileNetV3LargeBackbone(MultiLevelBackbone):
    """MobileNetV3-Large (torchvision, random init): C4-expansion (stride 16) and last maps.

    ``forward(x: (B, 3, H, W)) -> [(B, 672, ⌈H/16⌉, ⌈W/16⌉), (B, 480, ⌈H/32⌉, ⌈W/32⌉)]``
    (``reduced_tail``; 960 ch without). Stages for freezing: 0 = up to the C4 expansion,
    1 = the rest.
    """

    def __init__(
        self,
        reduced_tail: bool = True,
        bn_momentum: Annotated[float, Field(gt=0, le=1)] = 0.01,
        frozen_stages: FrozenStages = -1,
        norm_eval: bool = False,
    ):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=bn_momentum)
        features = torchvision.models.mobilenet_v3_large(
            weights=None, reduced_tail=reduced_tail, norm_layer=norm_layer
        ).features
        c4 = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)][-1]
        self.features = nn.Sequential(
            nn.Sequential(*features[:c4], features[c4].block[0]),
            nn.Sequential(features[c4].block[1:], *features[c4 + 1 :]),
        )
        self.out_channels = [features[c4].block[0].out_channels, features[-1].out_channels]
        self.strides = [16, 32]
        self.init_freezing(frozen_stages, norm_eval)

    def stages(self) -> list[nn.Module]:
        return list(self.features)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for part in self.features:
            x = part(x)
            outs.append(x)
        return outs
