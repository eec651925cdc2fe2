"""Detectors (registry kind ``detector``): ``loss(images, gt_boxes, gt_labels)`` and
``predict(images, image_sizes)``. Importing this package registers every detector."""

from tunedet.models.detectors.fcos import FCOS
from tunedet.models.detectors.retinanet import RetinaNet
from tunedet.models.detectors.ssd import SSD
from tunedet.models.detectors.yolov3 import YOLOv3

__all__ = ["FCOS", "RetinaNet", "SSD", "YOLOv3"]
