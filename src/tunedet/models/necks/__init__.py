"""Necks: ``forward(list of backbone maps) -> list of maps`` with ``out_channels`` and ``strides``.

Importing this package registers every neck.
"""

from tunedet.models.necks.fpn import FPN
from tunedet.models.necks.pan import PAN
from tunedet.models.necks.ssd import SSDNeck
from tunedet.models.necks.yolo import YOLOv3Neck

__all__ = ["FPN", "PAN", "SSDNeck", "YOLOv3Neck"]
