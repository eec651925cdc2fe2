"""Detectors (registry kind ``detector``): ``loss(images, gt_boxes, gt_labels)`` and
``predict(images, image_sizes)``. Importing this package registers every detector."""

from typing import Any

from torch import nn

from tunedet.models.detectors.cornernet import CornerNet
from tunedet.models.detectors.faster_rcnn import FasterRCNN
from tunedet.models.detectors.fcos import FCOS
from tunedet.models.detectors.fsaf import FSAF
from tunedet.models.detectors.mask_rcnn import MaskRCNN
from tunedet.models.detectors.retinanet import RetinaNet
from tunedet.models.detectors.ssd import SSD
from tunedet.models.detectors.yolov3 import YOLOv3

__all__ = ["CornerNet", "FCOS", "FSAF", "FasterRCNN", "MaskRCNN", "RetinaNet", "SSD", "YOLOv3"]


def loss_extras(detector: nn.Module, batch: Any) -> dict[str, Any]:
    """The optional ``loss`` inputs ``detector`` takes from a ``DetectionBatch``:
    ``gt_masks`` for a mask detector (``needs_masks``), the unpadded ``image_sizes`` for
    one that clips to them (``needs_image_sizes``, the two-stage detectors)."""
    extras: dict[str, Any] = {}
    if getattr(detector, "needs_masks", False):
        extras["gt_masks"] = batch.gt_masks
    if getattr(detector, "needs_image_sizes", False):
        extras["image_sizes"] = batch.image_sizes
    return extras
