"""Mask R-CNN's mask head (He et al., 2017): a small FCN on each RoI's pooled features.

``roi_size × roi_size`` RoIAlign from the FPN level of the RoI's size → ``num_convs ×
(3×3 conv + ReLU)`` → 2×2 stride-2 deconv + ReLU → 1×1 conv: ``2·roi_size`` square mask
logits per class (or one class-agnostic channel). Detectron's ``MRCNN`` keys:
``mask_rcnn_fcn_head_v1up4convs`` = ``num_convs: 4``, ``DIM_REDUCED`` = ``conv_dim``,
``ROI_XFORM_RESOLUTION`` = ``roi_size`` (``RESOLUTION`` = 2·roi_size),
``ROI_XFORM_SAMPLING_RATIO`` = ``sampling_ratio``, ``DILATION`` = ``dilation``,
``CLS_SPECIFIC_MASK`` = not ``class_agnostic``, ``WEIGHT_LOSS_MASK`` = ``loss_weight``,
``CONV_INIT`` = ``conv_init``; ``FPN.ROI_CANONICAL_LEVEL/SCALE/MIN_LEVEL/MAX_LEVEL`` =
``canonical_level/scale``, ``roi_min_level/roi_max_level`` (the pooler keys are the
roi_head's, see ``roi_head.py``; set both heads alike to keep Detectron's single FPN setting).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from tunedet.config.registry import register
from tunedet.models.heads.roi_align import MultiLevelRoIAlign, pooled_levels


@register("mask_head", "fcn", injected=("in_channels", "strides", "num_classes"))
class FCNMaskHead(nn.Module):
    """Mask R-CNN FCN mask head: RoIAlign → 4 convs → deconv ×2 → per-class mask logits.

    ``forward(feats, rois (P, 5) [batch_index, x1, y1, x2, y2]) -> logits (P, C', 2·roi_size,
    2·roi_size)`` with ``C' = num_classes`` (1 when ``class_agnostic``); ``select(logits,
    labels) -> (P, 2·roi_size, 2·roi_size)`` each RoI's own class channel; ``loss(logits,
    labels, targets)``. ``conv_init``: ``msra`` (He normal, fan-out) or ``gaussian``
    (N(0, 0.001)) for every conv, biases 0.
    """

    def __init__(
        self,
        in_channels: int,
        strides: list[int],
        num_classes: int,
        num_convs: Annotated[int, Field(ge=0)] = 4,
        conv_dim: Annotated[int, Field(ge=1)] = 256,
        dilation: Annotated[int, Field(ge=1)] = 1,
        roi_size: Annotated[int, Field(ge=1)] = 14,
        sampling_ratio: Annotated[int, Field(ge=0)] = 2,
        aligned: bool = False,
        canonical_level: Annotated[int, Field(ge=0)] = 4,
        canonical_scale: Annotated[float, Field(gt=0)] = 224.0,
        roi_min_level: Annotated[int, Field(ge=0)] = 2,
        roi_max_level: Annotated[int, Field(ge=0)] = 5,
        class_agnostic: bool = False,
        loss_weight: Annotated[float, Field(ge=0)] = 1.0,
        conv_init: Literal["msra", "gaussian"] = "msra",
    ):
        super().__init__()
        wanted, self.feature_indices = pooled_levels(
            strides, roi_min_level, roi_max_level, "mask_head"
        )
        self.num_classes = num_classes
        self.class_agnostic = class_agnostic
        self.loss_weight = loss_weight
        self.aligned = aligned
        self.mask_size = 2 * roi_size  # side of the predicted masks and their targets
        self.pooler = MultiLevelRoIAlign(
            roi_size,
            sampling_ratio,
            wanted,
            canonical_level=canonical_level,
            canonical_scale=canonical_scale,
            aligned=aligned,
        )
        layers: list[nn.Module] = []
        for i in range(num_convs):
            conv_in = in_channels if i == 0 else conv_dim
            layers += [nn.Conv2d(conv_in, conv_dim, 3, padding=dilation, dilation=dilation)]
            layers += [nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        deconv_in = conv_dim if num_convs > 0 else in_channels
        self.deconv = nn.ConvTranspose2d(deconv_in, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, 1 if class_agnostic else num_classes, 1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                if conv_init == "msra":
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.normal_(module.weight, std=0.001)
                nn.init.zeros_(module.bias)

    def forward(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """feats: the neck's maps [(B, in_channels, H_l, W_l)]; rois: (P, 5) px →
        (P, C', 2·roi_size, 2·roi_size) logits."""
        x = self.convs(self.pooler([feats[i] for i in self.feature_indices], rois))
        return self.predictor(F.relu(self.deconv(x)))

    def select(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(P, S, S) logits of each RoI's class ``labels (P,)`` (channel 0 if agnostic)."""
        if self.class_agnostic:
            return logits[:, 0]
        return logits[torch.arange(len(labels), device=logits.device), labels]

    def loss(self, logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
        """Mean binary cross-entropy with logits over the positive RoIs and their pixels,
        on each RoI's class channel only (no competition between classes), × loss_weight.

        logits: (P, C', S, S); labels: (P,) in [0, num_classes); targets: (P, S, S) in
        [0, 1] (``mask_ops.mask_targets``). Zero (still a graph node) when P = 0.
        """
        if labels.numel() == 0:
            return logits.sum() * 0.0
        chosen = self.select(logits, labels).float()
        loss = F.binary_cross_entropy_with_logits(chosen, targets.to(chosen))
        return loss * self.loss_weight
