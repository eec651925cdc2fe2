"""Dense heads: ``forward(list of neck maps) -> flattened per-anchor predictions``.

Importing this package registers every head.
"""

from tunedet.models.heads.fcos import FCOSHead
from tunedet.models.heads.prediction_layout import concat_levels, flatten_level
from tunedet.models.heads.retina import RetinaHead
from tunedet.models.heads.ssd import SSDHead
from tunedet.models.heads.yolo import YOLOv3Head

__all__ = ["FCOSHead", "RetinaHead", "concat_levels", "flatten_level", "SSDHead", "YOLOv3Head"]
