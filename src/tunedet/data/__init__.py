"""Datasets (COCO, VOC, YOLO, synthetic), bad-input reports, tiling, transforms, batching.

Importing this package registers the ``dataset`` and ``transform`` components.
"""

from tunedet.data.annotated_images import FULL_CHECK_LIMIT, AnnotatedImageDataset, ImageRecord
from tunedet.data.bad_input import BadInputReport, DataError
from tunedet.data.box_filters import MinBoxArea
from tunedet.data.coco import CocoDataset
from tunedet.data.coco_writer import write_coco
from tunedet.data.crop_expand import Expand, MinIoURandomCrop, RandomCrop
from tunedet.data.loader import DetectionBatch, TransformedDataset, collate_detection
from tunedet.data.mixing import CopyPaste, MixUp, Mosaic
from tunedet.data.patch_mixing import RICAP, CutMix
from tunedet.data.photometric import Cutout, PhotometricDistortion, RandomErasing
from tunedet.data.samplers import EpochBatchSampler, aspect_groups, repeat_factors
from tunedet.data.synthetic import SHAPES, SyntheticShapes
from tunedet.data.tiling import TileBoxes, crop_to_tile, make_tiles
from tunedet.data.transforms import (
    Compose,
    MultiScaleResize,
    Normalize,
    Pad,
    RandomHorizontalFlip,
    RandomRotate90,
    RandomVerticalFlip,
    Resize,
)
from tunedet.data.voc import VOCDataset
from tunedet.data.yolo import YOLODataset

__all__ = [
    "FULL_CHECK_LIMIT",
    "RICAP",
    "SHAPES",
    "AnnotatedImageDataset",
    "BadInputReport",
    "CocoDataset",
    "Compose",
    "CopyPaste",
    "CutMix",
    "Cutout",
    "DataError",
    "DetectionBatch",
    "EpochBatchSampler",
    "Expand",
    "ImageRecord",
    "MinBoxArea",
    "MinIoURandomCrop",
    "MixUp",
    "Mosaic",
    "MultiScaleResize",
    "Normalize",
    "Pad",
    "PhotometricDistortion",
    "RandomCrop",
    "RandomErasing",
    "RandomHorizontalFlip",
    "RandomRotate90",
    "RandomVerticalFlip",
    "Resize",
    "SyntheticShapes",
    "TileBoxes",
    "TransformedDataset",
    "VOCDataset",
    "YOLODataset",
    "aspect_groups",
    "collate_detection",
    "crop_to_tile",
    "make_tiles",
    "repeat_factors",
    "write_coco",
]
