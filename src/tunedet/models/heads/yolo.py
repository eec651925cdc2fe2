"""YOLOv3 head (Redmon & Farhadi, 2018): per level a 3×3 conv then a 1×1 predictor.

Each level has its own weights (the levels have different widths): a 3×3
``ConvNormAct`` to ``2·in_channels[l]`` (mmdetection's "bridge"), then a 1×1 conv to
``A·(5 + C)`` outputs per cell: for each anchor ``(tx, ty, tw, th, objectness, C class
logits)``. Objectness and class biases start at ``-log((1 − π)/π)`` (``prior_prob``) so
the first iterations are not dominated by the many background cells.
"""

import math
from typing import Annotated

from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.heads.prediction_layout import concat_levels
from tunedet.models.layers import ActKind, ConvNormAct, NormKind


@register("head", "yolov3", injected=("in_channels", "num_classes", "num_anchors"))
class YOLOv3Head(nn.Module):
    """YOLOv3 head: per level a 3×3 bridge conv and a 1×1 box/objectness/class predictor.

    ``forward(feats) -> (cls_logits (B, N, C), box_deltas (B, N, 4), obj_logits (B, N))``;
    ``N = Σ H_l·W_l·num_anchors`` in (level, y, x, anchor) order (``prediction_layout``);
    ``box_deltas`` are the raw ``(tx, ty, tw, th)`` the ``yolo`` box coder decodes.
    """

    def __init__(
        self,
        in_channels: list[int],
        num_classes: int,
        num_anchors: int,
        norm: NormKind = "bn",
        act: ActKind = "leaky_relu",
        prior_prob: Annotated[float, Field(gt=0, lt=1)] = 0.01,
    ):
        super().__init__()
        if isinstance(in_channels, int):
            raise ValueError("the yolov3 head needs one input width per level (a list)")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.num_outputs = 5 + num_classes
        self.bridges = nn.ModuleList(
            ConvNormAct(c, 2 * c, 3, norm=norm, act=act) for c in in_channels
        )
        self.predictors = nn.ModuleList(
            nn.Conv2d(2 * c, num_anchors * self.num_outputs, 1) for c in in_channels
        )
        prior_bias = -math.log((1 - prior_prob) / prior_prob)
        for conv in self.predictors:
            nn.init.normal_(conv.weight, std=0.01)
            bias = conv.bias.detach().view(num_anchors, self.num_outputs)
            bias.zero_()
            bias[:, 4:] = prior_bias

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        if len(feats) != len(self.bridges):
            raise ValueError(f"the yolov3 head expects {len(self.bridges)} maps, got {len(feats)}")
        maps = [
            pred(bridge(f))
            for f, bridge, pred in zip(feats, self.bridges, self.predictors, strict=True)
        ]
        out = concat_levels(maps, self.num_outputs)  # (B, N, 5 + C)
        return out[..., 5:], out[..., :4], out[..., 4]
