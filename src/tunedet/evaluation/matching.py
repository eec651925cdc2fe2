"""COCO-style matching of detections to ground truth at one IoU threshold.

The per-detection outcome behind P/R/F1, FPPI, precision at a recall, the PR
curves and error analysis. It is pycocotools' `evaluateImg` rule for one IoU
threshold, area "all" and `max_dets` detections per image and category:
- per image and category, detections in descending score order (stable) each
  take the *free* non-crowd GT of that class with the highest IoU >= `iou_thr`
  (ties: the later GT in annotation order, as pycocotools);
- a GT is matched once: a duplicate detection is a false positive;
- a detection with no free GT but IoU >= `iou_thr` with a crowd region (GT
  with `iscrowd` or `ignore`; IoU = intersection / detection area) is
  ignored, neither TP nor FP; crowd regions are not positives;
- only the `max_dets` best detections of each image and category count
  (pycocotools' maxDets = 100); the others are dropped.
A VOC `difficult` flag is not an ignore flag here (as in pycocotools); mark
such objects `"ignore": 1` to exclude them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunedet.evaluation.coco import normalize_coco_gt, normalize_coco_results


@dataclass(frozen=True)
class DetectionSet:
    """GT and detections of a dataset as flat arrays (boxes xyxy in original pixels).

    Classes are indexed 0..K-1 by sorted COCO category id, images 0..N-1 by sorted id.
    """

    class_names: list[str]
    category_ids: list[int]
    image_ids: list[int]
    gt_boxes: np.ndarray  # (G, 4) xyxy float64
    gt_class: np.ndarray  # (G,) int64
    gt_image: np.ndarray  # (G,) int64
    gt_crowd: np.ndarray  # (G,) bool, crowd / ignore regions
    det_boxes: np.ndarray  # (D, 4) xyxy float64
    det_class: np.ndarray  # (D,) int64
    det_image: np.ndarray  # (D,) int64
    det_score: np.ndarray  # (D,) float64

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class MatchResult:
    """Outcome of every kept detection and GT at one IoU threshold.

    Detections are in descending score order (stable over pycocotools'
    per-category order: image id, then score within the image), so
    `np.cumsum` over a class's detections walks its PR curve.
    """

    data: DetectionSet
    iou_thr: float
    det_index: np.ndarray  # (D',) int64: row of each kept detection in `data`
    det_tp: np.ndarray  # (D',) bool
    det_ignored: np.ndarray  # (D',) bool, matched to a crowd region
    det_gt: np.ndarray  # (D',) int64: matched GT row in `data` (TP or ignored), else -1
    gt_matched: np.ndarray  # (G,) bool: non-crowd GT taken by a kept detection

    @property
    def det_score(self) -> np.ndarray:
        return self.data.det_score[self.det_index]

    @property
    def det_class(self) -> np.ndarray:
        return self.data.det_class[self.det_index]

    @property
    def det_fp(self) -> np.ndarray:
        return ~self.det_tp & ~self.det_ignored

    def num_positives(self, k: int | None = None) -> int:
        """Non-crowd GT of class `k` (all classes when None)."""
        positive = ~self.data.gt_crowd
        if k is not None:
            positive = positive & (self.data.gt_class == k)
        return int(positive.sum())


def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, 2:] += out[:, :2]
    return out


def detection_set(gt: dict, results: Sequence[dict]) -> DetectionSet:
    """Check and flatten COCO GT and results (see `coco.normalize_coco_gt`)."""
    gt_norm = normalize_coco_gt(gt)
    dets = normalize_coco_results(results, gt_norm)
    categories = sorted(gt_norm["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: k for k, c in enumerate(categories)}
    image_ids = sorted({img["id"] for img in gt_norm["images"]})
    img_index = {i: n for n, i in enumerate(image_ids)}
    anns = gt_norm["annotations"]
    return DetectionSet(
        class_names=[str(c.get("name", c["id"])) for c in categories],
        category_ids=[c["id"] for c in categories],
        image_ids=image_ids,
        gt_boxes=_xywh_to_xyxy([a["bbox"] for a in anns]),
        gt_class=np.array([cat_index[a["category_id"]] for a in anns], dtype=np.int64),
        gt_image=np.array([img_index[a["image_id"]] for a in anns], dtype=np.int64),
        gt_crowd=np.array([bool(a["iscrowd"]) for a in anns], dtype=bool),
        det_boxes=_xywh_to_xyxy([d["bbox"] for d in dets]),
        det_class=np.array([cat_index[d["category_id"]] for d in dets], dtype=np.int64),
        det_image=np.array([img_index[d["image_id"]] for d in dets], dtype=np.int64),
        det_score=np.array([d["score"] for d in dets], dtype=np.float64),
    )


def box_iou_with_crowd(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, 4) x (G, 4) xyxy -> (D, G) IoU; for crowd GT, intersection / detection area."""
    lt = np.maximum(dets[:, None, :2], gts[None, :, :2])
    rb = np.minimum(dets[:, None, 2:], gts[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=2)
    area_d = np.prod(np.clip(dets[:, 2:] - dets[:, :2], 0.0, None), axis=1)
    area_g = np.prod(np.clip(gts[:, 2:] - gts[:, :2], 0.0, None), axis=1)
    union = np.where(crowd[None, :], area_d[:, None], area_d[:, None] + area_g[None, :] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _last_argmax(values: np.ndarray) -> int:
    """Index of the last maximum (pycocotools keeps the later GT on equal IoU)."""
    return len(values) - 1 - int(np.argmax(values[::-1]))


def match_detections(data: DetectionSet, iou_thr: float = 0.5, max_dets: int = 100) -> MatchResult:
    """Match detections to GT per image and class (module docstring) at `iou_thr`."""
    num_dets = len(data.det_score)
    # pycocotools' per-category order: image, then descending score (stable) within it.
    order = np.lexsort((-data.det_score, data.det_image, data.det_class))
    group = data.det_class[order] * max(data.num_images, 1) + data.det_image[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if num_dets else np.zeros(0, int)
    rank = np.arange(num_dets) - np.repeat(starts, np.diff(np.r_[starts, num_dets]))
    kept = order[rank < max_dets]

    tp = np.zeros(num_dets, dtype=bool)
    ignored = np.zeros(num_dets, dtype=bool)
    det_gt = np.full(num_dets, -1, dtype=np.int64)
    gt_matched = np.zeros(len(data.gt_class), dtype=bool)
    thr = min(iou_thr, 1 - 1e-10)  # pycocotools' cap: IoU 1.0 still matches at threshold 1

    gt_key = data.gt_class * max(data.num_images, 1) + data.gt_image
    kept_key = data.det_class[kept] * max(data.num_images, 1) + data.det_image[kept]
    gt_order = np.argsort(gt_key, kind="stable")  # annotation order within a group
    sorted_gt_key = gt_key[gt_order]
    for key in np.intersect1d(kept_key, gt_key):
        # `kept` is sorted by (class, image, score): its groups are contiguous
        dets = kept[np.searchsorted(kept_key, key) : np.searchsorted(kept_key, key, "right")]
        gts = gt_order[
            np.searchsorted(sorted_gt_key, key) : np.searchsorted(sorted_gt_key, key, "right")
        ]
        gts = gts[np.argsort(data.gt_crowd[gts], kind="stable")]  # regular GT first
        crowd = data.gt_crowd[gts]
        iou = box_iou_with_crowd(data.det_boxes[dets], data.gt_boxes[gts], crowd)
        taken = np.zeros(len(gts), dtype=bool)
        for i, d in enumerate(dets):
            free = ~crowd & ~taken & (iou[i] >= thr)
            if free.any():
                g = _last_argmax(np.where(free, iou[i], -1.0))
                taken[g] = True
                tp[d] = True
            else:
                hit_crowd = crowd & (iou[i] >= thr)
                if not hit_crowd.any():
                    continue
                g = _last_argmax(np.where(hit_crowd, iou[i], -1.0))
                ignored[d] = True
            det_gt[d] = gts[g]
        gt_matched[gts[taken]] = True

    by_score = kept[np.argsort(-data.det_score[kept], kind="stable")]
    return MatchResult(
        data=data,
        iou_thr=float(iou_thr),
        det_index=by_score,
        det_tp=tp[by_score],
        det_ignored=ignored[by_score],
        det_gt=det_gt[by_score],
        gt_matched=gt_matched,
    )
