"""Backbones: ``forward(images) -> list of feature maps`` with ``out_channels`` and ``strides``.

Importing this package registers every backbone.
"""

from tunedet.models.backbones.base import MultiLevelBackbone
from tunedet.models.backbones.resnet import ResNetBackbone, resnet18, resnet34, resnet50
from tunedet.models.backbones.tiny_cnn import TinyCNN

__all__ = ["MultiLevelBackbone", "ResNetBackbone", "TinyCNN", "resnet18", "resnet34", "resnet50"]
