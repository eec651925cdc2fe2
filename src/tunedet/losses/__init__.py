"""Classification and box-regression losses (functional forms and registered classes)."""

from tunedet.losses.centerness import centerness_loss, centerness_targets
from tunedet.losses.cross_entropy import (
    SoftmaxCrossEntropyLoss,
    softmax_cross_entropy,
    stable_log_softmax,
    stable_softmax,
)
from tunedet.losses.focal import BCEWithLogitsLoss, FocalLoss, bce_with_logits, sigmoid_focal_loss
from tunedet.losses.iou_loss import (
    CIoULoss,
    DIoULoss,
    GIoULoss,
    IoULoss,
    ciou_loss,
    diou_loss,
    giou_loss,
    iou_loss,
)
from tunedet.losses.reduction import reduce_loss
from tunedet.losses.smooth_l1 import L1Loss, L2Loss, SmoothL1Loss, l1_loss, l2_loss, smooth_l1_loss
from tunedet.losses.yolo_box_weight import yolo_box_weight

__all__ = [
    "BCEWithLogitsLoss",
    "CIoULoss",
    "DIoULoss",
    "FocalLoss",
    "GIoULoss",
    "IoULoss",
    "L1Loss",
    "L2Loss",
    "SmoothL1Loss",
    "SoftmaxCrossEntropyLoss",
    "bce_with_logits",
    "centerness_loss",
    "centerness_targets",
    "ciou_loss",
    "diou_loss",
    "giou_loss",
    "iou_loss",
    "l1_loss",
    "l2_loss",
    "reduce_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "softmax_cross_entropy",
    "stable_log_softmax",
    "stable_softmax",
    "yolo_box_weight",
]
