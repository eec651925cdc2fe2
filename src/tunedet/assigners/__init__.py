"""Target assignment: which anchor (or point) learns which GT (registry kind ``assigner``)."""

from tunedet.assigners.atss import ATSSAssigner
from tunedet.assigners.base import AssignResult
from tunedet.assigners.max_iou import MaxIoUAssigner

__all__ = ["ATSSAssigner", "AssignResult", "MaxIoUAssigner"]
