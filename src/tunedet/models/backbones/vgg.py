"""VGG-16 as SSD uses it (Liu et al., 2016), and smaller VGGs of the same shape.

Blocks of ``depths[k]`` 3×3 convs of ``widths[k]`` channels separated by 2×2 max-pools
(the third one with ``ceil_mode``, so 300 px gives 38×38 at conv4_3); after conv5 SSD's
changes: pool5 becomes 3×3 stride 1, fc6 a 3×3 conv with ``dilation`` 6 and fc7 a 1×1
conv, both ``widths[5]`` (1024) channels.

Stages in the layout of ``base.py``: 0 = conv1 + pool1 (stride 2), 1 = conv2 + pool2
(4), 2 = conv3 + pool3 + conv4 (8, ends at conv4_3), 3 = pool4 + conv5 (16),
4 = pool5 + fc6 + fc7 (16). SSD reads stages 2 and 4 (conv4_3 and fc7); its extra
layers are the ``ssd`` neck.

Init: convs Kaiming-normal (fan out, as torchvision's VGG), biases zero; ``fc_init``
``"xavier_uniform"`` draws fc6/fc7 as torchvision's ``ssd300_vgg16`` does.
"""

from typing import Annotated, Literal

from pydantic import Field
from torch import nn

from tunedet.config.registry import register
from tunedet.models.backbones.base import FrozenStages, MultiLevelBackbone, check_out_indices
from tunedet.models.layers import ConvNormAct, NormKind

STAGE_STRIDES = (2, 4, 8, 16, 16)


@register("backbone", "vgg")
class VGG(MultiLevelBackbone):
    """SSD's VGG-16 (conv4_3 at stride 8, fc7 at stride 16) or a smaller VGG of that shape.

    ``forward(x: (B, 3, H, W)) -> [(B, out_channels[i], ⌈H/strides[i]⌉, ⌈W/strides[i]⌉)]``.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (64, 128, 256, 512, 512, 1024),
        depths: tuple[int, ...] = (2, 2, 3, 3, 3),
        dilation: Annotated[int, Field(ge=1)] = 6,
        out_indices: tuple[int, ...] = (2, 4),
        norm: NormKind = "none",
        frozen_stages: FrozenStages = -1,
        norm_eval: bool = False,
        fc_init: Literal["kaiming_normal", "xavier_uniform"] = "kaiming_normal",
    ):
        super().__init__()
        if len(widths) != 6 or min(widths) < 1:
            raise ValueError(f"widths needs 6 positive entries (conv1–5, fc6/7), got {widths}")
        if len(depths) != 5 or min(depths) < 1:
            raise ValueError(f"depths needs 5 positive entries (conv1–5), got {depths}")
        self.out_indices = check_out_indices(out_indices)

        def block(k: int, c_in: int) -> list[nn.Module]:
            return [
                ConvNormAct(c_in if i == 0 else widths[k], widths[k], 3, norm=norm)
                for i in range(depths[k])
            ]

        stages = [
            nn.Sequential(*block(0, 3), nn.MaxPool2d(2, 2)),
            nn.Sequential(*block(1, widths[0]), nn.MaxPool2d(2, 2)),
            nn.Sequential(
                *block(2, widths[1]), nn.MaxPool2d(2, 2, ceil_mode=True), *block(3, widths[2])
            ),
            nn.Sequential(nn.MaxPool2d(2, 2), *block(4, widths[3])),
            nn.Sequential(
                nn.MaxPool2d(3, 1, padding=1),
                nn.Conv2d(widths[4], widths[5], 3, padding=dilation, dilation=dilation),
                nn.ReLU(inplace=True),
                ConvNormAct(widths[5], widths[5], 1, norm=norm),
            ),
        ]
        self.layers = nn.ModuleList(stages[: self.out_indices[-1] + 1])
        stage_channels = (widths[0], widths[1], widths[3], widths[4], widths[5])
        self.out_channels = [stage_channels[i] for i in self.out_indices]
        self.strides = [STAGE_STRIDES[i] for i in self.out_indices]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if fc_init == "xavier_uniform" and len(self.layers) == 5:
            for m in self.layers[4].modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)
        self.init_freezing(frozen_stages, norm_eval)

    def stages(self) -> list[nn.Module]:
        return list(self.layers)
