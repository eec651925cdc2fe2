"""Everything practitioners read besides mAP, in one JSON-ready dict, with PNGs and tables.

`detection_metrics` gathers, at one IoU threshold (0.5 by default): AP per
class from the 101-point PR curve (equal to pycocotools' AP at that IoU),
P / R / F1 / FPPI at a score threshold, precision at a target recall, the PR
curves themselves and the confusion matrix. `evaluation_summary` adds the 12
COCO statistics and the per-class AP table (and COCO segm stats when GT and
results both carry masks). `write_evaluation` writes `metrics.json`,
`pr_curves.png` and `confusion_matrix.png`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunedet.evaluation.coco import (
    per_class_ap_from_eval,
    run_coco_eval,
    stats_from_eval,
)
from tunedet.evaluation.confusion import confusion_matrix
from tunedet.evaluation.matching import detection_set, match_detections
from tunedet.evaluation.pr_metrics import (
    RECALL_POINTS,
    at_recall,
    at_score_threshold,
    interpolated_precision,
    pr_curve,
)


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in np.asarray(values, dtype=float)]


def detection_metrics(
    gt: dict,
    results: Sequence[dict],
    score_thr: float = 0.5,
    recall: float = 0.9,
    iou_thr: float = 0.5,
    max_dets: int = 100,
) -> dict[str, Any]:
    """Operating-point metrics of COCO `results` against COCO `gt` (see `pr_metrics.py`).

    Returns:
        `{"iou_thr", "score_thr", "target_recall", "num_images", "classes",
        "per_class": {name: {"AP", "tp", "fp", "fn", "npos", "precision", "recall",
        "f1", "fppi", "at_recall": {"precision", "recall", "score_thr", "fppi"}}},
        "all": same, pooled over classes ("AP": mean over classes with GT),
        "pr_curves": {"recall": 101 points, "per_class": {name: precision},
        "mean": precision}, "confusion_matrix": {"labels": classes +
        ["background"], "counts": (K+1) x (K+1), rows true, columns predicted}}`.
        AP, recall and F1 are NaN for a class without GT.
    """
    data = detection_set(gt, results)
    match = match_detections(data, iou_thr=iou_thr, max_dets=max_dets)
    num_images = data.num_images
    per_class: dict[str, dict[str, Any]] = {}
    curves: dict[str, np.ndarray] = {}
    for k, name in enumerate(data.class_names):
        curve = pr_curve(match, k)
        curves[name] = interpolated_precision(curve)
        per_class[name] = {
            "AP": float(np.mean(curves[name])),
            **at_score_threshold(curve, score_thr, num_images),
            "at_recall": at_recall(curve, recall, num_images),
        }
    with_gt = [c for c in curves.values() if not np.isnan(c).all()]
    mean_curve = np.mean(with_gt, axis=0) if with_gt else np.full(len(RECALL_POINTS), np.nan)
    pooled = pr_curve(match)
    return {
        "iou_thr": float(iou_thr),
        "score_thr": float(score_thr),
        "target_recall": float(recall),
        "num_images": num_images,
        "classes": list(data.class_names),
        "per_class": per_class,
        "all": {
            "AP": float(np.mean(mean_curve)),
            **at_score_threshold(pooled, score_thr, num_images),
            "at_recall": at_recall(pooled, recall, num_images),
        },
        "pr_curves": {
            "recall": RECALL_POINTS.tolist(),
            "per_class": {name: _nan_to_none(c) for name, c in curves.items()},
            "mean": _nan_to_none(mean_curve),
        },
        "confusion_matrix": {
            "labels": [*data.class_names, "background"],
            "counts": confusion_matrix(data, score_thr, iou_thr).tolist(),
        },
    }


def has_masks(gt: dict, results: Sequence[dict]) -> bool:
    anns = gt.get("annotations", [])
    return (
        bool(anns)
        and all("segmentation" in a for a in anns)
        and bool(results)
        and all("segmentation" in r for r in results)
    )


def evaluation_summary(
    gt: dict,
    results: Sequence[dict],
    score_thr: float = 0.5,
    recall: float = 0.9,
) -> dict[str, Any]:
    """COCO stats, per-class AP (IoU 0.50:0.95 and 0.5) and `detection_metrics`.

    Returns `{"coco": 12 stats, "per_class_ap": {name: AP}, "per_class_ap50":
    {name: AP50}, "detection": detection_metrics(...)}`, plus `"coco_segm"`
    (12 mask stats) when every GT annotation and every result has a `segmentation`.
    """
    evaluator = run_coco_eval(gt, results)
    out: dict[str, Any] = {
        "coco": stats_from_eval(evaluator),
        "per_class_ap": per_class_ap_from_eval(evaluator),
        "per_class_ap50": per_class_ap_from_eval(evaluator, iou_thr=0.5),
        "detection": detection_metrics(gt, results, score_thr, recall),
    }
    if has_masks(gt, results):
        out["coco_segm"] = stats_from_eval(run_coco_eval(gt, results, iou_type="segm"))
    return out


def to_json_ready(value: Any) -> Any:
    """Replace NaN / inf floats by None, recursively, so the result is strict JSON."""
    if isinstance(value, dict):
        return {k: to_json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_evaluation(
    metrics: dict[str, Any], out_dir: str | Path, detection: dict[str, Any] | None = None
) -> dict[str, Path]:
    """Write `metrics.json` (all of `metrics`, strict JSON), `pr_curves.png` and
    `confusion_matrix.png` (from `detection`, default `metrics["detection"]`) to `out_dir`."""
    from tunedet.evaluation.plots import plot_confusion_matrix, plot_pr_curves

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    detection = detection if detection is not None else metrics["detection"]
    paths = {"metrics": out_dir / "metrics.json"}
    paths["metrics"].write_text(json.dumps(to_json_ready(metrics), indent=1, allow_nan=False))
    curves = detection["pr_curves"]
    paths["pr_curves"] = plot_pr_curves(
        curves["recall"],
        curves["per_class"],
        curves["mean"],
        out_dir / "pr_curves.png",
        detection["iou_thr"],
    )
    confusion = detection["confusion_matrix"]
    paths["confusion_matrix"] = plot_confusion_matrix(
        confusion["counts"],
        confusion["labels"],
        out_dir / "confusion_matrix.png",
        detection["score_thr"],
        detection["iou_thr"],
    )
    return paths


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_per_class_ap(per_class_ap: dict[str, float], per_class_ap50: dict[str, float]) -> str:
    """A table of AP@[.50:.95] and AP50 per class."""
    width = max([5, *(len(n) for n in per_class_ap)])
    lines = [f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}"]
    lines += [
        f"{name:<{width}}  {_fmt(ap):>6}  {_fmt(per_class_ap50.get(name)):>6}"
        for name, ap in per_class_ap.items()
    ]
    return "\n".join(lines)


def format_detection_metrics(metrics: dict[str, Any]) -> str:
    """A table of AP, P, R, F1, TP/FP/FN, FPPI and precision at the target recall per class."""
    rows = {**metrics["per_class"], "all": metrics["all"]}
    width = max(5, *(len(n) for n in rows))
    r = metrics["target_recall"]
    ap = f"AP{100 * metrics['iou_thr']:.0f}"
    header = (
        f"{'class':<{width}}  {ap:>6}  {'P':>6}  {'R':>6}  {'F1':>6}  {'TP':>6}  {'FP':>6}"
        f"  {'FN':>6}  {'FPPI':>7}  {f'P@R{r:g}':>8}  {'thr@R':>6}  {'FPPI@R':>7}"
    )
    lines = [
        f"IoU {metrics['iou_thr']:g}; P/R/F1/FPPI at score >= {metrics['score_thr']:g}; "
        f"precision at recall >= {r:g} with its score threshold and FPPI; "
        f"{metrics['num_images']} images",
        header,
    ]
    for name, m in rows.items():
        at = m["at_recall"]
        lines.append(
            f"{name:<{width}}  {_fmt(m['AP']):>6}  {_fmt(m['precision']):>6}  "
            f"{_fmt(m['recall']):>6}  {_fmt(m['f1']):>6}  {m['tp']:>6}  {m['fp']:>6}  "
            f"{m['fn']:>6}  {_fmt(m['fppi'], 3):>7}  {_fmt(at['precision']):>8}  "
            f"{_fmt(at['score_thr']):>6}  {_fmt(at['fppi']):>7}"
        )
    return "\n".join(lines)
