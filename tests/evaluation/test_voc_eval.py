"""VOC AP: hand-computed curves, the devkit matching rule, difficult GT."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunedet.evaluation import voc_ap, voc_evaluate

# A ranked list TP, FP, TP, FP, TP against 4 positives:
#   cumulative tp 1, 1, 2, 2, 3   fp 0, 1, 1, 2, 2
#   recall    0.25, 0.25, 0.50, 0.50, 0.75
#   precision 1, 1/2, 2/3, 1/2, 3/5
RECALL = [0.25, 0.25, 0.5, 0.5, 0.75]
PRECISION = [1.0, 0.5, 2 / 3, 0.5, 0.6]


def test_voc_ap_11_point_by_hand():
    # t = 0, 0.1, 0.2        -> max precision at recall >= t is 1      (3 points: 3)
    # t = 0.3, 0.4, 0.5      -> max(2/3, 1/2, 3/5) = 2/3               (3 points: 2)
    # t = 0.6, 0.7           -> 3/5                                     (2 points: 1.2)
    # t = 0.8, 0.9, 1.0      -> recall never reached, 0
    # AP = (3 + 2 + 1.2) / 11 = 6.2 / 11
    assert voc_ap(RECALL, PRECISION, use_07_metric=True) == pytest.approx(6.2 / 11)


def test_voc_ap_all_point_by_hand():
    # Envelope (max precision at recall >= r): 1 on (0, .25], 2/3 on (.25, .5], 3/5 on (.5, .75],
    # 0 beyond. AP = .25 * 1 + .25 * 2/3 + .25 * 3/5 = 0.25 + 0.1666.. + 0.15 = 0.5666..
    assert voc_ap(RECALL, PRECISION, use_07_metric=False) == pytest.approx(
        0.25 + 0.25 * 2 / 3 + 0.15
    )


def test_voc_ap_all_point_takes_the_precision_envelope():
    # TP, FP, FP, TP, TP against 3 positives: recall 1/3, 1/3, 1/3, 2/3, 1;
    # precision 1, 1/2, 1/3, 1/2, 3/5. On (1/3, 2/3] the envelope is max(1/2, 3/5) = 3/5,
    # not the 1/2 measured there: AP = 1/3·1 + 1/3·3/5 + 1/3·3/5 (without it: 0.7).
    recall, precision = [1 / 3, 1 / 3, 1 / 3, 2 / 3, 1.0], [1.0, 0.5, 1 / 3, 0.5, 0.6]
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx((1 + 0.6 + 0.6) / 3)


def test_voc_ap_11_point_and_all_point_differ_on_half_recall():
    # One TP against 2 positives: recall 0.5 at precision 1.
    # 11-point: t = 0, .1, .., .5 give 1 (6 points) -> 6/11 = 0.5454..; all-point: 0.5 * 1 = 0.5.
    assert voc_ap([0.5], [1.0], use_07_metric=True) == pytest.approx(6 / 11)
    assert voc_ap([0.5], [1.0], use_07_metric=False) == pytest.approx(0.5)


def test_voc_ap_11_point_counts_recall_of_exactly_three_tenths():
    # Recall 3/10 at precision 1: t = 0, .1, .2, .3 reach it -> 4/11 (the arange(0, 1.1, .1)
    # threshold 0.30000000000000004 would give 3/11).
    assert voc_ap([3 / 10], [1.0], use_07_metric=True) == pytest.approx(4 / 11)


def test_voc_ap_of_empty_curve_is_zero():
    assert voc_ap([], [], use_07_metric=True) == 0.0
    assert voc_ap([], [], use_07_metric=False) == 0.0


def make_gt(boxes, difficult=(), ignore=(), category_ids=None, names=("a",)):
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    annotations = []
    for i, box in enumerate(boxes):
        ann = {
            "id": i + 1,
            "image_id": 1,
            "category_id": 1 if category_ids is None else category_ids[i],
            "bbox": list(box),
        }
        if i in difficult:
            ann["difficult"] = 1
        if i in ignore:
            ann["ignore"] = 1
        annotations.append(ann)
    return {"images": [{"id": 1}], "categories": categories, "annotations": annotations}


def det(box, score, category_id=1, image_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box), "score": score}


def test_voc_duplicate_detections_are_false_positives():
    gt = make_gt([(0, 0, 10, 10), (50, 50, 10, 10)])
    results = [det((0, 0, 10, 10), 0.9), det((0, 0, 10, 10), 0.8), det((50, 50, 10, 10), 0.7)]
    # TP, FP (duplicate), TP: recall .5, .5, 1; precision 1, 1/2, 2/3.
    # all-point: .5 * 1 + .5 * 2/3 = 0.8333..; 11-point: (6 * 1 + 5 * 2/3) / 11 = 0.8484..
    out = voc_evaluate(gt, results, use_07_metric=False)
    assert out["counts"]["a"] == {"npos": 2, "num_dets": 3, "tp": 2, "fp": 1, "ignored": 0}
    assert out["per_class"]["a"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_evaluate(gt, results)["mAP"] == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_voc_detection_on_taken_best_gt_is_fp_even_if_another_gt_overlaps():
    # GT 1 [0, 10] and GT 2 [2, 12] (x). The second detection [0.5, 10.5] overlaps GT 1 with IoU
    # 9.5 / 10.5 = 0.905 and GT 2 with 8.5 / 11.5 = 0.739: its best GT is taken -> FP (devkit).
    gt = make_gt([(0, 0, 10, 10), (2, 0, 10, 10)])
    results = [det((0, 0, 10, 10), 0.9), det((0.5, 0, 10, 10), 0.8)]
    counts = voc_evaluate(gt, results)["counts"]["a"]
    assert (counts["tp"], counts["fp"]) == (1, 1)


def test_voc_difficult_gt_is_neither_tp_nor_fp_nor_positive():
    gt = make_gt([(0, 0, 10, 10), (50, 50, 10, 10)], difficult={1})
    results = [
        det((50, 50, 10, 10), 0.95),  # on the difficult GT: ignored
        det((0, 0, 10, 10), 0.9),  # TP
        det((50, 50, 10, 10), 0.85),  # again on the difficult GT: ignored, not a duplicate FP
        det((80, 0, 10, 10), 0.5),  # FP
    ]
    # Remaining curve TP, FP against 1 positive: recall 1, 1; precision 1, 1/2 -> AP 1.
    out = voc_evaluate(gt, results, use_07_metric=False)
    assert out["counts"]["a"] == {"npos": 1, "num_dets": 4, "tp": 1, "fp": 1, "ignored": 2}
    assert out["per_class"]["a"] == pytest.approx(1.0)


def test_voc_ignore_flag_acts_as_difficult():
    flags = {"difficult": make_gt([(0, 0, 10, 10), (50, 50, 10, 10)], difficult={1})}
    flags["ignore"] = make_gt([(0, 0, 10, 10), (50, 50, 10, 10)], ignore={1})
    results = [det((50, 50, 10, 10), 0.95), det((0, 0, 10, 10), 0.9)]
    assert voc_evaluate(flags["ignore"], results) == voc_evaluate(flags["difficult"], results)


def test_voc_match_needs_iou_strictly_above_threshold():
    gt = make_gt([(0, 0, 10, 10)])
    exactly_half = det((0, 0, 20, 10), 0.9)  # IoU 100 / 200 = 0.5
    counts = voc_evaluate(gt, [exactly_half])["counts"]["a"]
    assert (counts["tp"], counts["fp"]) == (0, 1)
    assert voc_evaluate(gt, [exactly_half], iou_thr=0.49)["counts"]["a"]["tp"] == 1


def test_voc_class_without_positives_is_nan_and_left_out_of_map():
    gt = make_gt([(0, 0, 10, 10)], names=("a", "b"))
    results = [det((0, 0, 10, 10), 0.9), det((30, 30, 10, 10), 0.8, category_id=2)]
    out = voc_evaluate(gt, results)
    assert out["per_class"]["a"] == pytest.approx(1.0)
    assert math.isnan(out["per_class"]["b"])
    assert out["counts"]["b"]["fp"] == 1
    assert out["mAP"] == pytest.approx(1.0)


def test_voc_evaluate_without_detections_gives_zero_ap():
    out = voc_evaluate(make_gt([(0, 0, 10, 10)]), [])
    assert out["mAP"] == 0.0


def devkit_loop_reference(gt, results, iou_thr, use_07_metric):
    """Per-class, per-detection loop as in the devkit's voc_eval (continuous IoU)."""
    aps = {}
    for cat in gt["categories"]:
        per_image = {}
        for ann in gt["annotations"]:
            if ann["category_id"] != cat["id"]:
                continue
            x, y, w, h = ann["bbox"]
            rec = per_image.setdefault(ann["image_id"], {"boxes": [], "difficult": [], "taken": []})
            rec["boxes"].append([x, y, x + w, y + h])
            rec["difficult"].append(bool(ann.get("difficult")))
            rec["taken"].append(False)
        npos = sum(not d for rec in per_image.values() for d in rec["difficult"])
        mine = [r for r in results if r["category_id"] == cat["id"]]
        mine = [mine[i] for i in np.argsort([-r["score"] for r in mine], kind="stable")]
        tp, fp = np.zeros(len(mine)), np.zeros(len(mine))
        for d, r in enumerate(mine):
            x, y, w, h = r["bbox"]
            rec = per_image.get(r["image_id"])
            ovmax, jmax = -np.inf, -1
            if rec:
                g = np.array(rec["boxes"])
                iw = np.clip(np.minimum(g[:, 2], x + w) - np.maximum(g[:, 0], x), 0, None)
                ih = np.clip(np.minimum(g[:, 3], y + h) - np.maximum(g[:, 1], y), 0, None)
                inter = iw * ih
                union = w * h + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter
                overlaps = inter / union
                jmax = int(np.argmax(overlaps))
                ovmax = overlaps[jmax]
            if ovmax > iou_thr:
                if not rec["difficult"][jmax]:
                    if not rec["taken"][jmax]:
                        tp[d] = 1
                        rec["taken"][jmax] = True
                    else:
                        fp[d] = 1
            else:
                fp[d] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[cat["name"]] = devkit_ap(recall, precision, use_07_metric)
    return aps


def devkit_ap(rec, prec, use_07_metric):
    """The devkit's ``voc_ap`` as loops (11 thresholds i/10, or the area under the
    envelope built right to left), independent of ``tunedet.evaluation.voc_ap``."""
    if use_07_metric:
        ap = 0.0
        for i in range(11):
            reached = [p for r, p in zip(rec, prec, strict=True) if r >= i / 10]
            ap += (max(reached) if reached else 0.0) / 11
        return ap
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1))


def random_voc_case(seed=0, num_images=30, num_classes=3):
    rng = np.random.default_rng(seed)
    categories = [{"id": c + 1, "name": f"c{c}"} for c in range(num_classes)]
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id})
        for _ in range(rng.integers(1, 8)):
            x, y = rng.uniform(0, 300, 2)
            w, h = rng.uniform(8, 120, 2)
            cat = int(rng.integers(num_classes)) + 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "difficult": int(rng.random() < 0.1),
                }
            )
            for _ in range(rng.choice([0, 1, 1, 2])):
                n = rng.normal(0, 0.15, 4) * [w, h, w, h]
                box = [x + n[0], y + n[1], w + n[2], h + n[3]]
                results.append(det(box, float(rng.random()), cat, image_id))
        for _ in range(rng.integers(0, 4)):
            box = [*rng.uniform(0, 300, 2), *rng.uniform(8, 120, 2)]
            results.append(
                det(box, float(rng.random()), int(rng.integers(num_classes)) + 1, image_id)
            )
    return {"images": images, "categories": categories, "annotations": annotations}, results


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_voc_evaluate_equals_per_detection_devkit_loop(use_07_metric):
    gt, results = random_voc_case()
    out = voc_evaluate(gt, results, iou_thr=0.5, use_07_metric=use_07_metric)
    ref = devkit_loop_reference(gt, results, 0.5, use_07_metric)
    assert out["per_class"] == pytest.approx(ref, abs=1e-12)
    assert out["mAP"] == pytest.approx(np.mean(list(ref.values())))
    assert 0.2 < out["mAP"] < 0.95


def test_voc_evaluate_without_ground_truth_objects_is_nan():
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}], "annotations": []}
    out = voc_evaluate(gt, [det((0, 0, 5, 5), 0.5)])
    assert math.isnan(out["mAP"])
    assert out["counts"]["a"]["fp"] == 1
