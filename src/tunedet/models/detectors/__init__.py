"""Detectors (registry kind ``detector``): ``loss(images, gt_boxes, gt_labels)`` and
``predict(images, image_sizes)``. Importing this package registers every detector."""

from tunedet.models.detectors.faster_rcnn import FasterRCNN
from tunedet.models.detectors.fcos import FCOS
from tunedet.models.detectors.mask_rcnn import MaskRCNN
from tunedet.models.detectors.retinanet import RetinaNet
from tunedet.models.detectors.ssd import SSD
from tunedet.models.detectors.yolov3 import YOLOv3

__all__ = ["FCOS", "FasterRCNN", "MaskRCNN", "RetinaNet", "SSD", "YOLOv3"]
