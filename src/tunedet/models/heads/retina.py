"""RetinaNet head (Lin et al. 2017): two conv towers shared across pyramid levels.

Each branch is ``stacked_convs × (3×3 conv [+ norm] + act)`` then a 3×3
predictor: ``A·num_classes`` logits or ``A·4`` box deltas per cell. The
classification bias starts at ``-log((1 - π)/π)`` so every anchor's initial
foreground probability is ``π`` (``prior_prob``), which keeps the focal loss of
the many easy negatives from swamping the first iterations.

Knobs beyond the paper: ``norm`` ("gn" is FCOS/ATSS's choice; "bn" is a single
BatchNorm shared by all levels, whose batch statistics are taken per level in
training and whose running statistics mix levels) and ``separable``
(depthwise-separable convs, the light-head knob: ~1/C + 1/9 of the cost).
"""

import math
from typing import Annotated, Literal

from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.heads.prediction_layout import concat_levels
from tunedet.models.layers import ActKind, ConvNormAct, SeparableConv2d, make_conv, output_conv


@register("head", "retina", injected=("in_channels", "num_classes", "num_anchors"))
class RetinaHead(nn.Module):
    """RetinaNet classification + box-regression head, shared across levels.

    ``forward(feats: [(B, in_channels, H_l, W_l)]) -> (cls_logits (B, N, num_classes),
    box_deltas (B, N, 4))`` with ``N = Σ H_l·W_l·num_anchors`` in (level, y, x, anchor)
    order (see ``prediction_layout``).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int,
        feat_channels: Annotated[int, Field(ge=1)] = 256,
        stacked_convs: Annotated[int, Field(ge=0)] = 4,
        norm: Literal["none", "gn", "bn", "ln", "in"] = "none",
        act: ActKind = "relu",
        prior_prob: Annotated[float, Field(gt=0, lt=1)] = 0.01,
        separable: bool = False,
    ):
        super().__init__()
        if not 0 < prior_prob < 1:
            raise ValueError(f"prior_prob must lie in (0, 1), got {prior_prob}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.prior_prob = prior_prob
        self.separable = separable

        def tower() -> nn.Sequential:
            return nn.Sequential(
                *(
                    ConvNormAct(
                        in_channels if i == 0 else feat_channels,
                        feat_channels,
                        3,
                        norm=norm,
                        act=act,
                        separable=separable,
                    )
                    for i in range(stacked_convs)
                )
            )

        self.cls_tower = tower()
        self.box_tower = tower()
        pred_in = feat_channels if stacked_convs > 0 else in_channels
        self.cls_logits = make_conv(pred_in, num_anchors * num_classes, 3, separable=separable)
        self.box_deltas = make_conv(pred_in, num_anchors * 4, 3, separable=separable)
        self._init_weights()

    def _init_weights(self) -> None:
        """Paper init: convs N(0, 0.01), bias 0; cls bias -log((1-π)/π).

        Depthwise-separable convs would vanish the signal with N(0, 0.01) on both
        factors, so in separable towers (and the predictors' depthwise factor)
        Kaiming-normal (fan-in) is used instead; predictors' pointwise convs keep
        N(0, 0.01).
        """
        for tower in (self.cls_tower, self.box_tower):
            for m in tower.modules():
                if not isinstance(m, nn.Conv2d):
                    continue
                if self.separable:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                else:
                    nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for pred in (self.cls_logits, self.box_deltas):
            if isinstance(pred, SeparableConv2d):
                nn.init.kaiming_normal_(pred.depthwise.weight, mode="fan_in", nonlinearity="linear")
            conv = output_conv(pred)
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(
            output_conv(self.cls_logits).bias, -math.log((1 - self.prior_prob) / self.prior_prob)
        )

    def forward_levels(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw per-level maps: ``[(B, A·num_classes, H_l, W_l)]``, ``[(B, A·4, H_l, W_l)]``."""
        cls_maps = [self.cls_logits(self.cls_tower(f)) for f in feats]
        box_maps = [self.box_deltas(self.box_tower(f)) for f in feats]
        return cls_maps, box_maps

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        cls_maps, box_maps = self.forward_levels(feats)
        return concat_levels(cls_maps, self.num_classes), concat_levels(box_maps, 4)
