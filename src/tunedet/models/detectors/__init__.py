"""Detectors (registry kind ``detector``): ``loss(images, gt_boxes, gt_labels)`` and
``predict(images, image_sizes)``. Importing this package registers every detector."""

from tunedet.models.detectors.retinanet import RetinaNet

__all__ = ["RetinaNet"]
