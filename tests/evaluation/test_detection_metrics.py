"""Operating-point metrics: PR curves equal pycocotools at IoU 0.5; F1, FPPI, precision at
recall and the confusion matrix equal hand-computed small cases; PNG and JSON outputs."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tunedet.evaluation import (
    confusion_matrix,
    detection_metrics,
    detection_set,
    evaluation_summary,
    format_detection_metrics,
    interpolated_precision,
    match_detections,
    pr_curve,
    write_evaluation,
)


def _sibling(name: str):
    """A module of this folder (tests have no packages under --import-mode=importlib)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_coco_cases = _sibling("test_coco_eval")
TREES_XML = _coco_cases.TREES_XML
random_coco_case = _coco_cases.random_coco_case
trees_gt_from_voc_xml = _coco_cases.trees_gt_from_voc_xml


def pycocotools_eval(gt: dict, results: list[dict], max_dets: int = 100):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.params.maxDets = sorted([1, min(10, max_dets), max_dets])  # evaluate() sorts
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def assert_curves_equal_pycocotools(gt: dict, results: list[dict], max_dets: int = 100) -> None:
    data = detection_set(gt, results)
    match = match_detections(data, iou_thr=0.5, max_dets=max_dets)
    reference = pycocotools_eval(gt, results, max_dets)
    precision = reference.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, area all, max dets
    recall = reference.eval["recall"][0, :, 0, -1]
    for k in range(data.num_classes):
        curve = pr_curve(match, k)
        ours = interpolated_precision(curve)
        if curve.npos == 0:
            assert np.all(precision[:, k] == -1) and np.isnan(ours).all()
            continue
        np.testing.assert_allclose(ours, precision[:, k], atol=1e-12)
        final_recall = curve.recall[-1] if len(curve.tp) else 0.0
        assert final_recall == pytest.approx(recall[k], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pr_curves_equal_pycocotools_on_random_detections(seed):
    gt, results = random_coco_case(seed, num_images=40)
    assert_curves_equal_pycocotools(gt, results)


def test_pr_curves_equal_pycocotools_with_max_dets_cut():
    gt, results = random_coco_case(5, num_images=30)
    assert_curves_equal_pycocotools(gt, results, max_dets=2)


def test_pr_curves_equal_pycocotools_on_tree_crowns():
    if not TREES_XML.is_file():
        pytest.skip(f"real annotations not found: {TREES_XML}")
    gt = trees_gt_from_voc_xml(TREES_XML)
    rng = np.random.default_rng(3)
    results = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        if rng.random() < 0.85:
            jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
            box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
            results.append(
                {"image_id": 1, "category_id": 1, "bbox": box, "score": float(rng.uniform())}
            )
    for _ in range(30):
        box = [*rng.uniform(0, 350, 2), *rng.uniform(10, 60, 2)]
        results.append({"image_id": 1, "category_id": 1, "bbox": box, "score": float(rng.random())})
    assert_curves_equal_pycocotools(gt, results)


def test_ap_of_detection_metrics_equals_coco_ap50_per_class():
    gt, results = random_coco_case(4, num_images=30)
    summary = evaluation_summary(gt, results)
    for name, m in summary["detection"]["per_class"].items():
        assert m["AP"] == pytest.approx(summary["per_class_ap50"][name], abs=1e-9), name
    assert summary["detection"]["all"]["AP"] == pytest.approx(summary["coco"]["AP50"], abs=1e-9)


# ------------------------------------------------------- hand-computed small cases


def one_class_case() -> tuple[dict, list[dict]]:
    """2 images, 3 GT of one class; 5 detections, scores 0.9 .. 0.5.

    image 1: GT a [0,0,10,10], GT b [20,0,10,10]; image 2: GT c [0,0,10,10] (xywh).
    d1 0.9 on a (IoU 1)               -> TP
    d2 0.8 on a again (IoU 0.81)      -> FP (duplicate: a is taken)
    d3 0.7 on image 2, far from c     -> FP
    d4 0.6 on b (IoU 1)               -> TP
    d5 0.5 on c (IoU 1)               -> TP
    """
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1, "name": "obj"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 10]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10]},
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.7},
        {"image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 10], "score": 0.6},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5},
    ]
    return gt, dets


def test_duplicate_detection_is_false_positive_and_pr_curve_by_hand():
    gt, dets = one_class_case()
    curve = pr_curve(match_detections(detection_set(gt, dets)), 0)
    # TP, FP, FP, TP, TP -> cumulative TP 1,1,1,2,3 and FP 0,1,2,2,2
    np.testing.assert_array_equal(curve.tp, [1, 1, 1, 2, 3])
    np.testing.assert_array_equal(curve.fp, [0, 1, 2, 2, 2])
    # recall = TP / 3; precision = TP / (TP + FP) = 1, 1/2, 1/3, 2/4, 3/5
    np.testing.assert_allclose(curve.recall, [1 / 3, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve.precision, [1, 0.5, 1 / 3, 0.5, 0.6])


def test_precision_recall_f1_and_fppi_at_score_threshold_by_hand():
    gt, dets = one_class_case()
    m = detection_metrics(gt, dets, score_thr=0.65, recall=0.9)["per_class"]["obj"]
    # score >= 0.65 keeps d1 (TP), d2 (FP), d3 (FP): TP 1, FP 2, FN 3 - 1 = 2
    assert (m["tp"], m["fp"], m["fn"], m["npos"]) == (1, 2, 2, 3)
    # P = 1 / 3, R = 1 / 3, F1 = 2 (1/3)(1/3) / (2/3) = 1/3; FPPI = 2 FP / 2 images = 1
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(1 / 3)
    assert m["fppi"] == pytest.approx(1.0)


def test_f1_at_a_threshold_keeping_all_detections_by_hand():
    gt, dets = one_class_case()
    m = detection_metrics(gt, dets, score_thr=0.5)["per_class"]["obj"]
    # all 5: TP 3, FP 2 -> P = 3/5 = 0.6, R = 3/3 = 1, F1 = 2 * 0.6 * 1 / 1.6 = 0.75
    assert m["precision"] == pytest.approx(0.6)
    assert m["recall"] == pytest.approx(1.0)
    assert m["f1"] == pytest.approx(0.75)
    assert m["fppi"] == pytest.approx(1.0)  # 2 FP / 2 images


def test_precision_at_recall_by_hand():
    gt, dets = one_class_case()
    # Operating points (score >=): 0.9 (R 1/3, P 1), 0.8 (1/3, 1/2), 0.7 (1/3, 1/3),
    # 0.6 (2/3, 1/2), 0.5 (1, 3/5).
    # recall >= 0.5: points 0.6 (P 0.5) and 0.5 (P 0.6) -> best P 0.6 at score 0.5,
    # recall 1, FPPI 2 FP / 2 images = 1.
    at = detection_metrics(gt, dets, recall=0.5)["per_class"]["obj"]["at_recall"]
    assert at == pytest.approx({"precision": 0.6, "recall": 1.0, "score_thr": 0.5, "fppi": 1.0})
    # recall >= 0.3: every point -> best P 1 at score 0.9 (recall 1/3, no FP)
    at = detection_metrics(gt, dets, recall=0.3)["per_class"]["obj"]["at_recall"]
    assert at == pytest.approx({"precision": 1.0, "recall": 1 / 3, "score_thr": 0.9, "fppi": 0.0})


def test_precision_at_unreached_recall_is_zero_without_threshold():
    gt, dets = one_class_case()
    dets = dets[:3]  # recall stays 1/3
    at = detection_metrics(gt, dets, recall=0.9)["per_class"]["obj"]["at_recall"]
    assert at == {"precision": 0.0, "recall": None, "score_thr": None, "fppi": None}


def test_equal_scores_form_one_operating_point():
    gt, dets = one_class_case()
    for det in dets[1:4]:
        det["score"] = 0.7  # d2 (FP), d3 (FP), d4 (TP) now tie
    # score >= 0.7 keeps d1..d4 together: TP 2, FP 2 -> P 0.5, R 2/3; there is no
    # operating point "d1..d2 only", so precision at recall 0.6 is 3/5 at score 0.5
    # (recall 1) rather than a split tie group.
    m = detection_metrics(gt, dets, score_thr=0.7, recall=0.6)["per_class"]["obj"]
    assert (m["tp"], m["fp"]) == (2, 2)
    assert m["at_recall"]["precision"] == pytest.approx(0.6)
    assert m["at_recall"]["score_thr"] == pytest.approx(0.5)


def test_pooled_row_sums_classes_and_class_without_gt_is_nan():
    gt, dets = one_class_case()
    gt["categories"].append({"id": 2, "name": "empty"})
    dets.append({"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.95})
    out = detection_metrics(gt, dets, score_thr=0.5)
    empty, pooled = out["per_class"]["empty"], out["all"]
    assert math.isnan(empty["recall"]) and math.isnan(empty["AP"]) and empty["fp"] == 1
    # pooled: TP 3, FP 2 + 1 = 3 -> P 3/6, R 3/3, FPPI 3 / 2
    assert (pooled["tp"], pooled["fp"], pooled["npos"]) == (3, 3, 3)
    assert pooled["precision"] == pytest.approx(0.5)
    assert pooled["fppi"] == pytest.approx(1.5)
    assert pooled["AP"] == pytest.approx(out["per_class"]["obj"]["AP"])  # classes with GT only


def test_detection_on_crowd_region_is_neither_tp_nor_fp():
    gt, dets = one_class_case()
    gt["annotations"].append(
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [40, 40, 40, 40], "iscrowd": 1}
    )
    m = detection_metrics(gt, dets, score_thr=0.5)["per_class"]["obj"]
    # d3 [50,50,10,10] lies inside the crowd region (intersection / det area = 1): ignored
    assert (m["tp"], m["fp"], m["npos"]) == (3, 1, 3)


def test_confusion_matrix_by_hand():
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 0, 10, 10]},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [40, 0, 10, 10]},
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # cat on cat
        {"image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 10], "score": 0.8},  # cat on dog
        {"image_id": 1, "category_id": 2, "bbox": [70, 70, 5, 5], "score": 0.7},  # dog on nothing
        {"image_id": 1, "category_id": 2, "bbox": [40, 0, 10, 10], "score": 0.2},  # below thr
    ]
    counts = confusion_matrix(detection_set(gt, dets), score_thr=0.5)
    # rows true (cat, dog, background), columns predicted (cat, dog, background):
    # cat->cat 1; dog->cat 1; background->dog 1 (FP); dog at [40,0] missed -> dog->background 1
    np.testing.assert_array_equal(counts, [[1, 0, 0], [1, 0, 1], [0, 1, 0]])


def test_write_evaluation_writes_strict_json_and_pngs(tmp_path: Path):
    gt, results = random_coco_case(1, num_images=10)
    gt["categories"].append({"id": 99, "name": "never"})  # NaN metrics -> null
    summary = evaluation_summary(gt, results, score_thr=0.4, recall=0.8)
    paths = write_evaluation(summary, tmp_path / "eval")
    loaded = json.loads(paths["metrics"].read_text())
    assert loaded["detection"]["per_class"]["never"]["AP"] is None
    assert loaded["detection"]["confusion_matrix"]["labels"][-1] == "background"
    for key in ("pr_curves", "confusion_matrix"):
        assert paths[key].stat().st_size > 1000
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_detection_metrics(summary["detection"])
    assert "P@R0.8" in table and table.splitlines()[-1].startswith("all")
