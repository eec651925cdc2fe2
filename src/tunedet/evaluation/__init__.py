"""Evaluation: COCO statistics (faster-coco-eval, equal to pycocotools) and VOC AP."""

from tunedet.evaluation.coco import (
    COCO_STAT_NAMES,
    EvaluationInputError,
    coco_evaluate,
    detections_to_coco_results,
    format_coco_table,
    per_class_ap,
)
from tunedet.evaluation.files import evaluate_files
from tunedet.evaluation.voc import voc_ap, voc_evaluate

__all__ = [
    "COCO_STAT_NAMES",
    "EvaluationInputError",
    "coco_evaluate",
    "detections_to_coco_results",
    "evaluate_files",
    "format_coco_table",
    "per_class_ap",
    "voc_ap",
    "voc_evaluate",
]
