"""PASCAL VOC average precision, 2007 11-point and VOC2010+ all-point.

Matching follows the VOC devkit: per class, detections in descending score
order (stable: ties keep the results' order) each take the GT of their class
in the same image with the highest IoU, whether or not it is already taken.
- IoU > `iou_thr` with a GT not yet taken: true positive, the GT is taken.
- IoU > `iou_thr` with a taken GT: false positive (a duplicate), even when
  another GT would have matched. (COCO instead looks for the best free GT.)
- IoU > `iou_thr` with a `difficult` GT: neither TP nor FP; difficult GT are
  not counted among the positives.
- Otherwise: false positive.
GT flagged `difficult`, `ignore` or `iscrowd` are all treated as difficult.

IoU uses tunedet's continuous convention (width = x1 - x0). The original
devkit code adds 1 pixel to widths and heights (`x1 - x0 + 1`), which gives
slightly higher IoU for small boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunedet.evaluation.coco import normalize_coco_gt, normalize_coco_results


def voc_ap(recall: Sequence[float], precision: Sequence[float], use_07_metric: bool) -> float:
    """Average precision from a PR curve given in detection order.

    Args:
        recall: (N,) cumulative recall after each detection (non-decreasing).
        precision: (N,) cumulative precision after each detection.
        use_07_metric: VOC2007 11-point interpolation, mean over t in
            {0, 0.1, ..., 1} of max(precision[recall >= t]) (0 when none);
            otherwise VOC2010+ area under the monotone envelope
            p(r) = max(precision[recall >= r]).

    The 11 thresholds are exactly i / 10; the Python port of the devkit builds
    them with `np.arange(0, 1.1, 0.1)`, whose 0.30000000000000004 misses a
    recall of exactly 3/10.
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision differ in length: {rec.size} vs {prec.size}")
    if use_07_metric:
        thresholds = np.arange(11) / 10.0
        reached = rec[None, :] >= thresholds[:, None]  # (11, N)
        best = np.where(reached, prec[None, :], 0.0).max(axis=1, initial=0.0)
        return float(best.sum() / 11.0)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    out = boxes.copy()
    out[:, 2:] += out[:, :2]
    return out


def _paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of `a[i]` with `b[i]`: (P, 4) xyxy each -> (P,), 0 for empty unions."""
    lt = np.maximum(a[:, :2], b[:, :2])
    rb = np.minimum(a[:, 2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_detections_voc(
    det_boxes: np.ndarray,
    det_keys: np.ndarray,
    gt_boxes: np.ndarray,
    gt_keys: np.ndarray,
    gt_difficult: np.ndarray,
    iou_thr: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Devkit matching of detections already sorted by descending score.

    Args:
        det_boxes: (D, 4) xyxy, best score first. det_keys: (D,) int group
            (one per image and class); a detection only sees GT of its group.
        gt_boxes: (G, 4) xyxy. gt_keys: (G,) int group. gt_difficult: (G,) bool.
        iou_thr: a match needs IoU > iou_thr (strictly, as the devkit).

    Returns:
        `tp, fp, ignored`: (D,) bool each; `ignored` are matches to difficult GT.
    """
    num_dets = len(det_boxes)
    gt_order = np.argsort(gt_keys, kind="stable")  # keeps annotation order in a group
    sorted_keys = gt_keys[gt_order]
    start = np.searchsorted(sorted_keys, det_keys, side="left")
    count = np.searchsorted(sorted_keys, det_keys, side="right") - start
    # One row per (detection, candidate GT) pair, grouped by detection.
    pair_det = np.repeat(np.arange(num_dets), count)
    first_pair = np.cumsum(count) - count
    pair_gt = gt_order[start[pair_det] + np.arange(len(pair_det)) - first_pair[pair_det]]
    iou = _paired_iou(det_boxes[pair_det], gt_boxes[pair_gt])

    best_iou = np.full(num_dets, -1.0)
    np.maximum.at(best_iou, pair_det, iou)
    # The first GT reaching the maximum, as np.argmax in the devkit.
    at_best = np.flatnonzero(iou == best_iou[pair_det])
    dets_with_best, first = np.unique(pair_det[at_best], return_index=True)
    best_gt = np.full(num_dets, -1)
    best_gt[dets_with_best] = pair_gt[at_best[first]]

    hit = best_iou > iou_thr
    ignored = np.zeros(num_dets, dtype=bool)
    ignored[hit] = gt_difficult[best_gt[hit]]
    claims = np.flatnonzero(hit & ~ignored)  # in score order
    _, first_claim = np.unique(best_gt[claims], return_index=True)
    tp = np.zeros(num_dets, dtype=bool)
    tp[claims[first_claim]] = True
    fp = ~hit | (hit & ~ignored & ~tp)
    return tp, fp, ignored


def voc_evaluate(
    gt: dict,
    results: list[dict],
    iou_thr: float = 0.5,
    use_07_metric: bool = True,
) -> dict:
    """PASCAL VOC AP per class and its mean.

    Args:
        gt: COCO-format GT; annotations may carry `"difficult": 1` or
            `"ignore": 1` (see the module docstring for the matching rule).
        results: COCO results `{image_id, category_id, bbox [x, y, w, h], score}`.
        iou_thr: IoU a detection must exceed to match.
        use_07_metric: VOC2007 11-point AP, else VOC2010+ all-point AP.

    Returns:
        `{"mAP": mean AP over classes with positives, "per_class": {name: AP
        (NaN without positives)}, "counts": {name: {"npos", "num_dets", "tp",
        "fp", "ignored"}}, "iou_thr", "use_07_metric"}`.
    """
    gt_norm = normalize_coco_gt(gt)
    dets = normalize_coco_results(results, gt_norm)
    categories = gt_norm["categories"]
    cat_index = {cat["id"]: k for k, cat in enumerate(categories)}
    img_index = {img["id"]: i for i, img in enumerate(gt_norm["images"])}
    num_images = max(len(img_index), 1)

    anns = gt_norm["annotations"]
    gt_boxes = _xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4))
    gt_cls = np.array([cat_index[a["category_id"]] for a in anns], dtype=np.int64)
    gt_keys = gt_cls * num_images + np.array(
        [img_index[a["image_id"]] for a in anns], dtype=np.int64
    )
    gt_difficult = np.array([bool(a["iscrowd"] or a.get("difficult")) for a in anns], dtype=bool)

    scores = np.array([d["score"] for d in dets], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    dets = [dets[i] for i in order]
    det_boxes = _xywh_to_xyxy(np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4))
    det_cls = np.array([cat_index[d["category_id"]] for d in dets], dtype=np.int64)
    det_keys = det_cls * num_images + np.array(
        [img_index[d["image_id"]] for d in dets], dtype=np.int64
    )

    tp, fp, ignored = match_detections_voc(
        det_boxes, det_keys, gt_boxes, gt_keys, gt_difficult, iou_thr
    )

    per_class, counts = {}, {}
    for k, cat in enumerate(categories):
        name = cat.get("name", str(cat["id"]))
        npos = int(np.sum((gt_cls == k) & ~gt_difficult))
        mine = (det_cls == k) & ~ignored  # matches to difficult GT drop out of the curve
        tp_cum = np.cumsum(tp[mine])
        fp_cum = np.cumsum(fp[mine])
        counts[name] = {
            "npos": npos,
            "num_dets": int(np.sum(det_cls == k)),
            "tp": int(tp_cum[-1]) if len(tp_cum) else 0,
            "fp": int(fp_cum[-1]) if len(fp_cum) else 0,
            "ignored": int(np.sum((det_cls == k) & ignored)),
        }
        if npos == 0:
            per_class[name] = float("nan")
            continue
        recall = tp_cum / npos
        precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
        per_class[name] = voc_ap(recall, precision, use_07_metric)

    with_positives = [ap for ap in per_class.values() if not np.isnan(ap)]
    return {
        "mAP": float(np.mean(with_positives)) if with_positives else float("nan"),
        "per_class": per_class,
        "counts": counts,
        "iou_thr": iou_thr,
        "use_07_metric": use_07_metric,
    }
