"""Evaluate a COCO results file against a COCO ground-truth file.

Backs `tunedet evaluate --gt GT.json --dets DETS.json --metric coco|voc07|voc12`.
Besides the chosen metric it returns the operating-point metrics of
`summary.detection_metrics` (P/R/F1, FPPI, precision at recall, PR curves,
confusion matrix), and COCO segm stats when both files carry masks.
Every input problem raises `EvaluationInputError` with a one-line message
that names the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from tunedet.evaluation.coco import (
    EvaluationInputError,
    per_class_ap_from_eval,
    run_coco_eval,
    stats_from_eval,
)
from tunedet.evaluation.summary import detection_metrics, has_masks
from tunedet.evaluation.voc import voc_evaluate

METRICS = ("coco", "voc07", "voc12")


def load_json_file(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing file or bad JSON raises a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"{what} file not found: {path}")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise EvaluationInputError(
            f"{what} file {path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    except UnicodeDecodeError as err:
        raise EvaluationInputError(f"{what} file {path} is not UTF-8 text: {err.reason}") from None
    except RecursionError:
        raise EvaluationInputError(f"{what} file {path}: nested too deeply") from None


def check_results_list(results: Any, path: str | Path) -> list[dict]:
    """Check that `results` is a list of `{image_id, category_id, bbox, score}` dicts."""
    expected = "a JSON list of {image_id, category_id, bbox, score} objects"
    if isinstance(results, dict) and "annotations" in results:
        raise EvaluationInputError(
            f"detections file {path} holds a COCO dataset dict, expected {expected} "
            "(was the ground-truth file passed as --dets?)"
        )
    if not isinstance(results, list):
        raise EvaluationInputError(
            f"detections file {path} must be {expected}, got a JSON {type(results).__name__}"
        )
    for i, det in enumerate(results):
        if not isinstance(det, dict):
            raise EvaluationInputError(
                f"detections file {path}: item {i} is not an object: {det!r}"
            )
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
        if missing:
            raise EvaluationInputError(
                f"detections file {path}: item {i} lacks {', '.join(map(repr, missing))}"
            )
        box = det["bbox"]
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
        ):
            raise EvaluationInputError(
                f"detections file {path}: item {i} bbox must be 4 numbers [x, y, w, h], got {box!r}"
            )
        if not isinstance(det["score"], int | float) or isinstance(det["score"], bool):
            raise EvaluationInputError(
                f"detections file {path}: item {i} score must be a number, got {det['score']!r}"
            )
        # JSON's NaN / Infinity: a NaN score ranks last and can make mAP read 1.0
        if not all(math.isfinite(v) for v in (det["score"], *box)):
            raise EvaluationInputError(
                f"detections file {path}: item {i} has a non-finite score or bbox "
                f"(score {det['score']!r}, bbox {box!r})"
            )
    return results


def evaluate_files(
    gt_path: str | Path,
    dets_path: str | Path,
    metric: Literal["coco", "voc07", "voc12"] = "coco",
    score_thr: float = 0.5,
    recall: float = 0.9,
) -> dict:
    """Evaluate a COCO results JSON file against a COCO GT JSON file.

    Returns:
        metric "coco": `{"metric": "coco", "stats": {12 COCO stats},
        "per_class": {name: AP@[.5:.95]}, "per_class_ap50": {name: AP50}}`,
        plus `"segm_stats"` when every GT annotation and result has a
        `segmentation`; "voc07" / "voc12": `voc_evaluate`'s dict (11-point /
        all-point AP at IoU 0.5) with `"metric"` added. Both with
        `"detection": detection_metrics(gt, results, score_thr, recall)`.
    """
    if metric not in METRICS:
        raise EvaluationInputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    gt = load_json_file(gt_path, "ground-truth")
    if not isinstance(gt, dict):
        raise EvaluationInputError(
            f"ground-truth file {gt_path} must hold a COCO dataset object, "
            f"got a JSON {type(gt).__name__}"
        )
    results = check_results_list(load_json_file(dets_path, "detections"), dets_path)
    try:
        if metric == "coco":
            evaluator = run_coco_eval(gt, results)
            out = {
                "metric": metric,
                "stats": stats_from_eval(evaluator),
                "per_class": per_class_ap_from_eval(evaluator),
                "per_class_ap50": per_class_ap_from_eval(evaluator, iou_thr=0.5),
            }
            if has_masks(gt, results):
                out["segm_stats"] = stats_from_eval(run_coco_eval(gt, results, iou_type="segm"))
        else:
            out = {"metric": metric, **voc_evaluate(gt, results, use_07_metric=metric == "voc07")}
        out["detection"] = detection_metrics(gt, results, score_thr, recall)
        return out
    except EvaluationInputError as err:
        raise EvaluationInputError(f"{gt_path} / {dets_path}: {err}") from None
