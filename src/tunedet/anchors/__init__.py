"""Anchor and prior generators (registry kind ``anchor_generator``)."""

from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.anchors.ssd_priors import SSDPriorGenerator
from tunedet.anchors.yolo import YOLOAnchorGenerator

__all__ = ["GridAnchorGenerator", "SSDPriorGenerator", "YOLOAnchorGenerator"]
