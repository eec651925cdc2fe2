"""Backbones: ``forward(images) -> list of feature maps`` with ``out_channels`` and ``strides``.

Importing this package registers every backbone.
"""

from tunedet.models.backbones.base import MultiLevelBackbone
from tunedet.models.backbones.csp_darknet import CSPDarknet
from tunedet.models.backbones.darknet import Darknet53, TinyDarknet
from tunedet.models.backbones.mobilenet import MobileNetV2Backbone
from tunedet.models.backbones.mobilenet_v3 import MobileNetV3LargeBackbone
from tunedet.models.backbones.repvgg import RepVGG, RepVGGBlock
from tunedet.models.backbones.resnet import (
    ResNetBackbone,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnext50_32x4d,
    resnext101_32x8d,
)
from tunedet.models.backbones.tiny_cnn import TinyCNN
from tunedet.models.backbones.vgg import VGG

__all__ = [
    "VGG",
    "CSPDarknet",
    "Darknet53",
    "MobileNetV2Backbone",
    "MobileNetV3LargeBackbone",
    "MultiLevelBackbone",
    "RepVGG",
    "RepVGGBlock",
    "ResNetBackbone",
    "TinyCNN",
    "TinyDarknet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnext50_32x4d",
    "resnext101_32x8d",
]
