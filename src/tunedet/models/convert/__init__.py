"""Converters from other toolboxes' checkpoints to tunedet state dicts."""

from tunedet.models.convert.torchvision import (
    ARCHITECTURES,
    coco80_indices,
    convert_torchvision_detector,
    select_classes,
    torchvision_architecture,
)

__all__ = [
    "ARCHITECTURES",
    "coco80_indices",
    "convert_torchvision_detector",
    "select_classes",
    "torchvision_architecture",
]
