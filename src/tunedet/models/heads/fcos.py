"""FCOS head (Tian et al., 2019) and its ATSS / OneNet presets: classification, box
regression with a learnable scale per level, and a quality (centerness) logit.

Module layout (the names a state-dict converter maps onto; ``i`` counts tower layers,
``L`` is the number of pyramid levels, ``A`` anchors per location, always 1):

- ``cls_tower.{i}.conv`` (3×3, ``feat_channels``), ``cls_tower.{i}.norm``, then the
  activation: the classification tower, shared across levels;
- ``box_tower.{i}.conv``, ``box_tower.{i}.norm``: the regression tower;
- ``cls_logits``: 3×3 conv on the cls tower → ``num_classes`` logits per location;
- ``bbox_pred``: 3×3 conv on the box tower → 4 box outputs per location;
- ``centerness``: 3×3 conv on the box tower → 1 quality logit per location (FCOS's
  "centerness on the regression branch"); absent with ``centerness=False``;
- ``scales``: ``(L,)`` learnable multipliers of ``bbox_pred``'s output, one per level
  (absent with ``learnable_scales=False``).

torchvision's ``FCOSHead`` maps onto it as ``classification_head.conv.{3i}`` →
``cls_tower.{i}.conv``, ``classification_head.conv.{3i+1}`` → ``cls_tower.{i}.norm``,
``regression_head.conv.*`` → ``box_tower.*``, ``regression_head.bbox_reg`` →
``bbox_pred``, ``regression_head.bbox_ctrness`` → ``centerness`` (with ``norm: gn``,
``conv_bias: true``, ``box_activation: relu_stride``, ``learnable_scales: false``).

Box outputs, per level ``l`` with stride ``s_l`` and raw conv output ``x``:
``exp``: ``exp(scale_l·x)`` pixel distances (FCOS paper); ``relu_stride``:
``relu(scale_l·x)·s_l`` pixel distances (FCOS "norm on bbox", torchvision's FCOS, whose
box coder multiplies by an anchor of side ``s_l``); ``none``: ``scale_l·x`` (ATSS: deltas
for the delta coder).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.heads.prediction_layout import concat_levels
from tunedet.models.layers import (
    ActKind,
    NormKind,
    SeparableConv2d,
    make_activation,
    make_conv,
    make_norm,
    output_conv,
)

BoxActivation = Literal["exp", "relu_stride", "none"]


@register("head", "fcos", injected=("in_channels", "num_classes", "num_anchors", "strides"))
class FCOSHead(nn.Module):
    """FCOS/ATSS head: class logits, per-level scaled box regression and a centerness logit.

    ``forward(feats: [(B, in_channels, H_l, W_l)]) -> (cls_logits (B, N, num_classes),
    box_regression (B, N, 4), quality_logits (B, N) or None)``, ``N = Σ H_l·W_l`` in
    (level, y, x) order (see ``prediction_layout``); ``strides`` (one per level) come from
    the neck.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_anchors: int,
        strides: tuple[int, ...],
        feat_channels: Annotated[int, Field(ge=1)] = 256,
        stacked_convs: Annotated[int, Field(ge=0)] = 4,
        norm: NormKind = "gn",
        act: ActKind = "relu",
        conv_bias: bool = False,
        prior_prob: Annotated[float, Field(gt=0, lt=1)] = 0.01,
        box_activation: BoxActivation = "relu_stride",
        learnable_scales: bool = True,
        centerness: bool = True,
        separable: bool = False,
    ):
        super().__init__()
        if num_anchors != 1:
            raise ValueError(
                f"model.head: fcos predicts one box per location, but model.anchor_generator "
                f"has {num_anchors} anchors per location (use one ratio and one scale)"
            )
        if not 0 < prior_prob < 1:
            raise ValueError(f"prior_prob must lie in (0, 1), got {prior_prob}")
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.box_activation = box_activation
        self.prior_prob = prior_prob
        self.separable = separable

        def tower() -> nn.Sequential:
            layers = []
            for i in range(stacked_convs):
                conv_in = in_channels if i == 0 else feat_channels
                conv = make_conv(
                    conv_in,
                    feat_channels,
                    3,
                    bias=conv_bias or norm == "none",
                    separable=separable,
                )
                layer = OrderedDict(
                    conv=conv, norm=make_norm(norm, feat_channels), act=make_activation(act)
                )
                layers.append(nn.Sequential(layer))
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.box_tower = tower()
        pred_in = feat_channels if stacked_convs > 0 else in_channels
        self.cls_logits = make_conv(pred_in, num_classes, 3, separable=separable)
        self.bbox_pred = make_conv(pred_in, 4, 3, separable=separable)
        self.centerness = make_conv(pred_in, 1, 3, separable=separable) if centerness else None
        num_levels = len(self.strides)
        self.scales = nn.Parameter(torch.ones(num_levels)) if learnable_scales else None
        self._init_weights()

    def _init_weights(self) -> None:
        """Paper init: convs N(0, 0.01), biases 0, cls bias −log((1 − π)/π); separable
        towers (and predictors' depthwise factors) Kaiming-normal as in ``RetinaHead``."""
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
        for pred in (self.cls_logits, self.bbox_pred, self.centerness):
            if pred is None:
                continue
            if isinstance(pred, SeparableConv2d):
                nn.init.kaiming_normal_(pred.depthwise.weight, mode="fan_in", nonlinearity="linear")
            conv = output_conv(pred)
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(
            output_conv(self.cls_logits).bias, -math.log((1 - self.prior_prob) / self.prior_prob)
        )

    def box_outputs(self, raw: Tensor, level: int) -> Tensor:
        """One level's raw ``bbox_pred`` map ``(B, 4, H, W)`` → box outputs (see module doc)."""
        if self.scales is not None:
            raw = raw * self.scales[level]
        if self.box_activation == "exp":
            return raw.exp()
        if self.box_activation == "relu_stride":
            return raw.relu() * self.strides[level]
        return raw

    def forward_levels(
        self, feats: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None]:
        """Per-level maps: cls ``[(B, C, H_l, W_l)]``, boxes ``[(B, 4, H_l, W_l)]`` (after the
        scale and activation), quality ``[(B, 1, H_l, W_l)]`` or None."""
        if len(feats) != len(self.strides):
            raise ValueError(
                f"fcos head has {len(self.strides)} levels (strides {self.strides}), "
                f"got {len(feats)} feature maps"
            )
        cls_maps, box_maps, quality_maps = [], [], []
        for level, feat in enumerate(feats):
            cls_maps.append(self.cls_logits(self.cls_tower(feat)))
            box_feat = self.box_tower(feat)
            box_maps.append(self.box_outputs(self.bbox_pred(box_feat), level))
            if self.centerness is not None:
                quality_maps.append(self.centerness(box_feat))
        return cls_maps, box_maps, (quality_maps if self.centerness is not None else None)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        cls_maps, box_maps, quality_maps = self.forward_levels(feats)
        quality = None if quality_maps is None else concat_levels(quality_maps, 1)[..., 0]
        return concat_levels(cls_maps, self.num_classes), concat_levels(box_maps, 4), quality
