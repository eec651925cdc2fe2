"""Operating-point metrics from matched detections: PR curves, P/R/F1, FPPI, precision at recall.

All numbers come from a `MatchResult` (COCO-style matching at one IoU
threshold, see `matching.py`); detections matched to crowd regions drop out.
- PR curve: after the i-th detection (descending score) of a class,
  recall = TP_i / npos and precision = TP_i / (TP_i + FP_i). Its 101-point
  interpolation (precision envelope sampled at recall 0, 0.01, ..., 1, as
  pycocotools) averages to COCO's AP at that IoU.
- An operating point "score >= s" keeps every detection scoring at least s,
  so only the last detection of a run of equal scores is an operating point.
- P, R, F1 at a score threshold: P = TP / (TP + FP) (0 without detections),
  R = TP / npos, F1 = 2PR / (P + R) (0 when P + R = 0).
- Best-F1 operating point: over the operating points, F1 = 2 TP / (TP + FP + npos)
  (the same F1); its score is the threshold reports use for P/R/F1 and the confusion
  matrix, as ultralytics' F1 curve does (a fixed 0.5 keeps nothing early in training).
- FPPI = FP / number of images (all images of the GT, with or without objects).
- Precision at recall r: the best precision among operating points with
  recall >= r (the interpolated precision at r), with the score threshold and
  FPPI of that point; precision 0 and no threshold when recall r is never reached.
"All classes" pools TP / FP / npos over classes (micro average); each class
keeps its own class-aware matching.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tunedet.evaluation.matching import MatchResult

RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs


@dataclass(frozen=True)
class PRCurve:
    """Cumulative counts after each detection, best score first (crowd matches removed)."""

    score: np.ndarray  # (N,)
    tp: np.ndarray  # (N,) cumulative true positives
    fp: np.ndarray  # (N,) cumulative false positives
    npos: int

    @property
    def recall(self) -> np.ndarray:
        return self.tp / self.npos if self.npos else np.zeros(len(self.tp))

    @property
    def precision(self) -> np.ndarray:
        return self.tp / np.maximum(self.tp + self.fp, 1)

    def operating_points(self) -> np.ndarray:
        """Indices that end a run of equal scores (the points a threshold can select)."""
        if len(self.score) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.r_[self.score[1:] != self.score[:-1], True])


def pr_curve(match: MatchResult, k: int | None = None) -> PRCurve:
    """PR curve of class `k`, or of all classes pooled when None."""
    keep = ~match.det_ignored
    if k is not None:
        keep &= match.det_class == k
    tp = match.det_tp[keep]
    return PRCurve(
        score=match.det_score[keep],
        tp=np.cumsum(tp, dtype=np.int64),
        fp=np.cumsum(~tp, dtype=np.int64),
        npos=match.num_positives(k),
    )


def interpolated_precision(curve: PRCurve, points: np.ndarray = RECALL_POINTS) -> np.ndarray:
    """Precision envelope max(precision[recall >= r]) at each recall point r, 0 beyond the
    curve's last recall; as pycocotools' `accumulate` (its mean is the AP). NaN without GT."""
    if curve.npos == 0:
        return np.full(len(points), np.nan)
    out = np.zeros(len(points))
    if len(curve.tp) == 0:
        return out
    envelope = np.maximum.accumulate(curve.precision[::-1])[::-1]
    index = np.searchsorted(curve.recall, points, side="left")
    valid = index < len(envelope)
    out[valid] = envelope[index[valid]]
    return out


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def at_score_threshold(curve: PRCurve, score_thr: float, num_images: int) -> dict[str, float]:
    """TP, FP, FN, precision, recall, F1 and FPPI of the detections scoring >= `score_thr`."""
    n = int(np.sum(curve.score >= score_thr))  # detections are sorted by score
    tp = int(curve.tp[n - 1]) if n else 0
    fp = int(curve.fp[n - 1]) if n else 0
    precision = _ratio(tp, tp + fp)
    if curve.npos:
        recall = tp / curve.npos
        f1 = _ratio(2 * precision * recall, precision + recall)
    else:
        recall = f1 = float("nan")
    return {
        "tp": tp,
        "fp": fp,
        "fn": curve.npos - tp,
        "npos": curve.npos,
        "precision": precision,
        "recall": float(recall),
        "f1": float(f1),
        "fppi": _ratio(fp, num_images),
    }


def at_recall(curve: PRCurve, recall: float, num_images: int) -> dict[str, float | None]:
    """Best precision among operating points with recall >= `recall`, with its score threshold,
    achieved recall and FPPI (`precision` 0, the others None where `recall` is never reached)."""
    points = curve.operating_points()
    reached = points[curve.recall[points] >= recall - 1e-12] if curve.npos else points[:0]
    if len(reached) == 0:
        return {"precision": 0.0, "recall": None, "score_thr": None, "fppi": None}
    best = reached[int(np.argmax(curve.precision[reached]))]
    return {
        "precision": float(curve.precision[best]),
        "recall": float(curve.recall[best]),
        "score_thr": float(curve.score[best]),
        "fppi": _ratio(int(curve.fp[best]), num_images),
    }


def f1_by_score(curve: PRCurve) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(score, precision, recall, f1)`` at every operating point, best score first;
    empty arrays without detections."""
    points = curve.operating_points()
    tp, fp = curve.tp[points].astype(np.float64), curve.fp[points].astype(np.float64)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / curve.npos if curve.npos else np.zeros(len(points))
    f1 = 2 * tp / np.maximum(tp + fp + curve.npos, 1)
    return curve.score[points].astype(np.float64), precision, recall, f1


def best_f1_threshold(curve: PRCurve, default: float = 0.5) -> tuple[float, float]:
    """``(score threshold, F1)`` of the operating point with the highest F1 (the highest
    score among ties); ``(default, 0.0)`` when no detection or no GT gives an F1 above 0."""
    score, _, _, f1 = f1_by_score(curve)
    if len(f1) == 0 or f1.max() <= 0:
        return float(default), 0.0
    best = int(np.argmax(f1))  # the first maximum: the highest score
    return float(score[best]), float(f1[best])
