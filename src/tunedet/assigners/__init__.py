"""Target assignment: which anchor (or point) learns which GT (registry kind ``assigner``).

Contract (``base.py``): ``assign(anchors (A, 4), num_anchors_per_level, gt_boxes (B, M, 4),
gt_labels (B, M)) -> AssignResult``; assigners with ``needs_predictions = True`` also
take ``pred_scores`` and ``pred_boxes`` keyword arguments.
"""

from tunedet.assigners.atss import ATSSAssigner
from tunedet.assigners.base import AssignResult
from tunedet.assigners.fcos import FCOSAssigner
from tunedet.assigners.grid import GridAssigner
from tunedet.assigners.hungarian import HungarianAssigner
from tunedet.assigners.max_iou import PRESETS as MAX_IOU_PRESETS
from tunedet.assigners.max_iou import MaxIoUAssigner
from tunedet.assigners.max_iou_topk import MaxIoUTopKAssigner

__all__ = [
    "MAX_IOU_PRESETS",
    "ATSSAssigner",
    "AssignResult",
    "FCOSAssigner",
    "GridAssigner",
    "HungarianAssigner",
    "MaxIoUAssigner",
    "MaxIoUTopKAssigner",
]
