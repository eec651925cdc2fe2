"""SSD head (Liu et al., 2016): one 3×3 classifier and one 3×3 box regressor per level.

Levels have their own weights (their widths and prior counts differ): ``A_l·(C + 1)``
softmax logits per cell, the last of the ``C + 1`` being background, and ``A_l·4`` box
deltas. ``separable`` (SSDLite, Sandler et al., 2018) makes both predictors depthwise 3×3 +
pointwise 1×1; with a ``norm`` other than ``"none"`` the depthwise conv is followed by
norm + ``act`` (torchvision's SSDLite head: depthwise 3×3-BN-ReLU6, then a 1×1 conv with
bias; ``norm_eps`` / ``norm_momentum`` the BatchNorm constants). Weights Xavier-uniform,
biases zero.
"""

from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.heads.prediction_layout import concat_levels
from tunedet.models.layers import ActKind, NormKind, make_activation, make_conv, make_norm


@register("head", "ssd", injected=("in_channels", "num_classes", "num_anchors"))
class SSDHead(nn.Module):
    """SSD head: per-level 3×3 softmax classifier (background last) and box regressor.

    ``forward(feats) -> (cls_logits (B, N, num_classes + 1), box_deltas (B, N, 4))``;
    ``N = Σ H_l·W_l·A_l`` in (level, y, x, prior) order; column ``num_classes`` is background.
    """

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        num_anchors: list[int] | int,
        separable: bool = False,
        norm: NormKind = "none",
        act: ActKind = "relu6",
        norm_eps: Annotated[float, Field(gt=0)] = 1e-5,
        norm_momentum: Annotated[float, Field(gt=0, le=1)] = 0.1,
    ):
        super().__init__()
        if norm != "none" and not separable:
            raise ValueError("the ssd head's norm applies to separable predictors only")
        if isinstance(in_channels, int):
            raise ValueError("the ssd head needs one input width per level (a list)")
        if isinstance(num_anchors, int):
            num_anchors = [num_anchors] * len(in_channels)
        if len(num_anchors) != len(in_channels):
            raise ValueError(
                f"the anchor generator has {len(num_anchors)} levels, the neck {len(in_channels)}"
            )
        self.num_classes = num_classes
        self.num_anchors = list(num_anchors)

        def predictor(c: int, out: int) -> nn.Module:
            if norm == "none":
                return make_conv(c, out, 3, separable=separable)
            return nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
                make_norm(norm, c),
                make_activation(act),
                nn.Conv2d(c, out, 1),
            )

        self.cls_convs = nn.ModuleList(
            predictor(c, a * (num_classes + 1))
            for c, a in zip(in_channels, num_anchors, strict=True)
        )
        self.box_convs = nn.ModuleList(
            predictor(c, a * 4) for c, a in zip(in_channels, num_anchors, strict=True)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = norm_eps, norm_momentum

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        if len(feats) != len(self.cls_convs):
            raise ValueError(f"the ssd head expects {len(self.cls_convs)} maps, got {len(feats)}")
        cls_maps = [conv(f) for conv, f in zip(self.cls_convs, feats, strict=True)]
        box_maps = [conv(f) for conv, f in zip(self.box_convs, feats, strict=True)]
        return concat_levels(cls_maps, self.num_classes + 1), concat_levels(box_maps, 4)
