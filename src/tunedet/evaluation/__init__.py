"""Evaluation: COCO statistics (faster-coco-eval, equal to pycocotools), VOC AP, and the
operating-point metrics practitioners use (P/R/F1, FPPI, precision at recall, PR curves,
confusion matrix)."""

from tunedet.evaluation.coco import (
    COCO_STAT_NAMES,
    EvaluationInputError,
    coco_evaluate,
    detections_to_coco_results,
    format_coco_table,
    per_class_ap,
)
from tunedet.evaluation.confusion import confusion_matrix
from tunedet.evaluation.files import evaluate_files
from tunedet.evaluation.matching import DetectionSet, MatchResult, detection_set, match_detections
from tunedet.evaluation.pr_metrics import (
    RECALL_POINTS,
    PRCurve,
    at_recall,
    at_score_threshold,
    interpolated_precision,
    pr_curve,
)
from tunedet.evaluation.summary import (
    detection_metrics,
    evaluation_summary,
    format_detection_metrics,
    format_per_class_ap,
    to_json_ready,
    write_evaluation,
)
from tunedet.evaluation.voc import voc_ap, voc_evaluate

__all__ = [
    "COCO_STAT_NAMES",
    "RECALL_POINTS",
    "DetectionSet",
    "EvaluationInputError",
    "MatchResult",
    "PRCurve",
    "at_recall",
    "at_score_threshold",
    "coco_evaluate",
    "confusion_matrix",
    "detection_metrics",
    "detection_set",
    "detections_to_coco_results",
    "evaluate_files",
    "evaluation_summary",
    "format_coco_table",
    "format_detection_metrics",
    "format_per_class_ap",
    "interpolated_precision",
    "match_detections",
    "per_class_ap",
    "pr_curve",
    "to_json_ready",
    "write_evaluation",
    "voc_ap",
    "voc_evaluate",
]
