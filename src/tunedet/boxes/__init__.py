"""Box formats, IoU family and box coders (xyxy, COCO convention, no +1 pixel)."""

from tunedet.boxes.coders import DeltaBoxCoder, DistanceBoxCoder, YOLOBoxCoder
from tunedet.boxes.formats import (
    BOX_FORMATS,
    box_area,
    clip_boxes,
    convert_boxes,
    cxcywh_to_xyxy,
    scale_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from tunedet.boxes.iou import (
    IOU_KINDS,
    aligned_box_iou,
    box_iou,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
)

__all__ = [
    "BOX_FORMATS",
    "IOU_KINDS",
    "DeltaBoxCoder",
    "DistanceBoxCoder",
    "YOLOBoxCoder",
    "aligned_box_iou",
    "box_area",
    "box_iou",
    "clip_boxes",
    "complete_box_iou",
    "convert_boxes",
    "cxcywh_to_xyxy",
    "distance_box_iou",
    "generalized_box_iou",
    "scale_boxes",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]
