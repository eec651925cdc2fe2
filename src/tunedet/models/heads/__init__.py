"""Dense heads: ``forward(list of neck maps) -> flattened per-anchor predictions``; the
two-stage parts (``rpn``, ``roi_head``, ``mask_head``: registry kinds of their own) and RoIAlign.

Importing this package registers every head.
"""

from tunedet.models.heads.cornernet import CornerNetHead
from tunedet.models.heads.fcos import FCOSHead
from tunedet.models.heads.mask_head import FCNMaskHead
from tunedet.models.heads.prediction_layout import concat_levels, flatten_level
from tunedet.models.heads.retina import RetinaHead
from tunedet.models.heads.roi_align import MultiLevelRoIAlign
from tunedet.models.heads.roi_head import SampledRois, StandardRoIHead
from tunedet.models.heads.rpn import RPN
from tunedet.models.heads.ssd import SSDHead
from tunedet.models.heads.yolo import YOLOv3Head

__all__ = [
    "CornerNetHead",
    "FCNMaskHead",
    "FCOSHead",
    "MultiLevelRoIAlign",
    "RPN",
    "RetinaHead",
    "SSDHead",
    "SampledRois",
    "StandardRoIHead",
    "YOLOv3Head",
    "concat_levels",
    "flatten_level",
]
