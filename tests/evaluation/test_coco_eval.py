"""coco_evaluate against pycocotools, input normalisation and result conversion."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from tunedet.evaluation import (
    COCO_STAT_NAMES,
    EvaluationInputError,
    coco_evaluate,
    detections_to_coco_results,
    format_coco_table,
    per_class_ap,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TREES_XML = SHARED / "data" / "trees" / "OSBS_029.xml"


# ------------------------------------------------------------------ helpers


def pycocotools_stats(gt: dict, results: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """The 12 stats of pycocotools' reference COCOeval, its printing silenced."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(COCO_STAT_NAMES, map(float, evaluator.stats), strict=True))


def assert_stats_close(ours: dict[str, float], ref: dict[str, float]) -> None:
    assert list(ours) == list(COCO_STAT_NAMES)
    for name in COCO_STAT_NAMES:
        assert ours[name] == pytest.approx(ref[name], abs=1e-6), name


def random_coco_case(seed: int = 0, num_images: int = 50, num_classes: int = 4):
    """GT with mixed sizes and a few crowd boxes; detections jittered around GT,
    some with the wrong class, some duplicated, plus random false positives."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    categories = [{"id": 10 + 3 * c, "name": f"class{c}"} for c in range(num_classes)]
    for image_id in range(1, num_images + 1):
        w, h = 640, 480
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id}.jpg"})
        for _ in range(rng.integers(0, 12)):
            side = float(np.exp(rng.uniform(np.log(6), np.log(300))))  # small, medium and large
            bw, bh = side * rng.uniform(0.5, 1.5), side * rng.uniform(0.5, 1.5)
            x, y = rng.uniform(0, w - 10), rng.uniform(0, h - 10)
            cat = categories[rng.integers(num_classes)]["id"]
            crowd = int(rng.random() < 0.05)
            box = [x, y, bw, bh]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": box,
                    "area": bw * bh * (rng.uniform(0.6, 1.0) if rng.random() < 0.3 else 1.0),
                    "iscrowd": crowd,
                }
            )
            for _ in range(rng.choice([0, 1, 1, 1, 2])):  # missed, found, found twice
                noise = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
                det_cat = cat if rng.random() < 0.9 else categories[rng.integers(num_classes)]["id"]
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": det_cat,
                        "bbox": [x + noise[0], y + noise[1], bw + noise[2], bh + noise[3]],
                        "score": float(rng.uniform(0.05, 1.0)),
                    }
                )
        for _ in range(rng.integers(0, 6)):  # background false positives
            results.append(
                {
                    "image_id": image_id,
                    "category_id": categories[rng.integers(num_classes)]["id"],
                    "bbox": [*rng.uniform(0, 400, 2), *rng.uniform(5, 150, 2)],
                    "score": float(rng.uniform(0.0, 0.6)),
                }
            )
    gt = {
        "info": {},
        "licenses": [],
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }
    return gt, results


def trees_gt_from_voc_xml(path: Path) -> dict:
    root = ET.parse(path).getroot()
    size = root.find("size")
    image = {
        "id": 1,
        "file_name": root.findtext("filename"),
        "width": int(size.findtext("width")),
        "height": int(size.findtext("height")),
    }
    annotations = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
        )
    return {
        "images": [image],
        "categories": [{"id": 1, "name": "Tree"}],
        "annotations": annotations,
    }


# -------------------------------------------------------------------- tests


def test_coco_evaluate_equals_pycocotools_on_random_detections():
    gt, results = random_coco_case()
    assert sum(a["iscrowd"] for a in gt["annotations"]) > 0
    ours = coco_evaluate(gt, results)
    ref = pycocotools_stats(gt, results)
    assert_stats_close(ours, ref)
    assert all(0.05 < ours[k] < 0.95 for k in ("AP", "APs", "APm", "APl"))


def test_coco_evaluate_equals_pycocotools_on_tree_crowns():
    if not TREES_XML.exists():
        pytest.skip(f"shared data not present: {TREES_XML}")
    gt = trees_gt_from_voc_xml(TREES_XML)
    assert len(gt["annotations"]) > 20
    rng = np.random.default_rng(1)
    results = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        if rng.random() < 0.15:
            continue
        noise = rng.normal(0, 0.1, 4) * [w, h, w, h]
        results.append(
            {
                "image_id": 1,
                "category_id": 1,
                "bbox": [
                    x + noise[0],
                    y + noise[1],
                    max(w + noise[2], 1.0),
                    max(h + noise[3], 1.0),
                ],
                "score": float(rng.uniform(0.2, 1.0)),
            }
        )
    for _ in range(15):
        results.append(
            {
                "image_id": 1,
                "category_id": 1,
                "bbox": [*rng.uniform(0, 360, 2), *rng.uniform(15, 60, 2)],
                "score": float(rng.uniform(0.0, 0.5)),
            }
        )
    assert_stats_close(coco_evaluate(gt, results), pycocotools_stats(gt, results))


def test_coco_evaluate_segm_equals_pycocotools():
    gt, results = random_coco_case(seed=3, num_images=8, num_classes=2)

    def polygon(box):
        x, y, w, h = box
        return [[x, y, x + w, y + 0.2 * h, x + 0.7 * w, y + h, x + 0.1 * w, y + 0.8 * h]]

    for item in gt["annotations"] + results:
        item["segmentation"] = polygon(item["bbox"])
    for ann in gt["annotations"]:
        ann["iscrowd"] = 0  # crowd GT would need RLE segmentation
    assert_stats_close(
        coco_evaluate(gt, results, iou_type="segm"), pycocotools_stats(gt, results, "segm")
    )


def test_coco_evaluate_empty_results_gives_zeros():
    gt, _ = random_coco_case(seed=2, num_images=10)
    stats = coco_evaluate(gt, [])
    assert stats == dict.fromkeys(COCO_STAT_NAMES, 0.0)


def test_coco_evaluate_rejects_result_on_unknown_image():
    gt, results = random_coco_case(seed=2, num_images=5)
    results.append({"image_id": 999, "category_id": 10, "bbox": [0, 0, 5, 5], "score": 0.5})
    with pytest.raises(EvaluationInputError, match="image_id 999"):
        coco_evaluate(gt, results)


def test_coco_evaluate_rejects_result_on_unknown_category():
    gt, results = random_coco_case(seed=2, num_images=5)
    results.append({"image_id": 1, "category_id": 0, "bbox": [0, 0, 5, 5], "score": 0.5})
    with pytest.raises(EvaluationInputError, match="category_id 0"):
        coco_evaluate(gt, results)


def test_coco_evaluate_fills_missing_area_iscrowd_info_and_licenses():
    gt, results = random_coco_case(seed=4, num_images=20)
    for ann in gt["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        ann["iscrowd"] = 0
    full = coco_evaluate(gt, results)
    bare = copy.deepcopy(gt)
    del bare["info"], bare["licenses"]
    for ann in bare["annotations"]:
        del ann["area"], ann["iscrowd"]
    snapshot = copy.deepcopy(bare)
    assert coco_evaluate(bare, results) == full
    assert bare == snapshot  # the caller's dicts are not modified


def test_coco_evaluate_treats_ignore_flag_as_crowd_region():
    gt, results = random_coco_case(seed=5, num_images=20)
    flagged = copy.deepcopy(gt)
    for i, ann in enumerate(flagged["annotations"]):
        if i % 7 == 0:
            ann["ignore"] = 1
    as_crowd = copy.deepcopy(flagged)
    for ann in as_crowd["annotations"]:
        ann["iscrowd"] = int(ann["iscrowd"] or ann.pop("ignore", 0))
    ours = coco_evaluate(flagged, results)
    assert_stats_close(ours, pycocotools_stats(as_crowd, results))
    # pycocotools itself overwrites `ignore` with `iscrowd`: the flag alone changes nothing there.
    assert pycocotools_stats(flagged, results) == pycocotools_stats(gt, results)
    assert ours != coco_evaluate(gt, results)


def test_detection_on_ignored_gt_is_not_a_false_positive():
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "ignore": 1},
        ],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.8},
    ]
    stats = coco_evaluate(gt, results)
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AR10"] == pytest.approx(1.0)
    # maxDets counts ignored detections too (as pycocotools): the one slot of AR1 is spent.
    assert stats["AR1"] == 0.0


def test_annotation_id_zero_does_not_allow_double_matching():
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]}],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.8},
    ]
    # With id 0 kept, the GT looks unmatched after the first match and both detections
    # count as TP: pycocotools then reports a recall of 2.
    stats = coco_evaluate(gt, results)
    assert stats["AR100"] == pytest.approx(1.0)
    assert stats["AP"] == pytest.approx(1.0)


def test_per_class_ap_averages_to_coco_ap():
    gt, results = random_coco_case(seed=6, num_images=30)
    per_class = per_class_ap(gt, results)
    assert list(per_class) == [c["name"] for c in gt["categories"]]
    assert np.mean(list(per_class.values())) == pytest.approx(coco_evaluate(gt, results)["AP"])
    at50 = per_class_ap(gt, results, iou_thr=0.5)
    assert np.mean(list(at50.values())) == pytest.approx(coco_evaluate(gt, results)["AP50"])


def test_per_class_ap_is_nan_for_category_without_gt():
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}],
    }
    per_class = per_class_ap(gt, [])
    assert per_class["a"] == 0.0
    assert math.isnan(per_class["b"])


def test_format_coco_table_has_one_line_per_stat():
    stats = dict(zip(COCO_STAT_NAMES, np.linspace(0.1, 0.9, 12), strict=True))
    table = format_coco_table(stats)
    lines = table.splitlines()
    assert len(lines) == 12
    assert len({len(line) for line in lines}) == 1  # fixed width
    assert lines[0] == (
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.100"
    )
    assert "area= small" in lines[3] and "maxDets=  1" in lines[6]


def test_detections_to_coco_results_rescales_and_maps_labels():
    predictions = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 2.0]]),
            "scores": torch.tensor([0.9, 0.3]),
            "labels": torch.tensor([1, 0]),
        },
        {
            "boxes": np.zeros((0, 4), np.float32),
            "scores": np.zeros(0),
            "labels": np.zeros(0, np.int64),
        },
        {
            "boxes": np.array([[8.0, 6.0, 16.0, 12.0]]),
            "scores": np.array([0.5]),
            "labels": np.array([2]),
        },
    ]
    results = detections_to_coco_results(
        predictions, image_ids=[7, 8, 9], scales=[2.0, 1.0, (0.5, 2.0)], label_to_category=[1, 5, 9]
    )
    assert results == [
        {
            "image_id": 7,
            "category_id": 5,
            "bbox": [5.0, 10.0, 10.0, 20.0],
            "score": pytest.approx(0.9),
        },
        {
            "image_id": 7,
            "category_id": 1,
            "bbox": [0.0, 0.0, 2.0, 1.0],
            "score": pytest.approx(0.3),
        },
        {"image_id": 9, "category_id": 9, "bbox": [16.0, 3.0, 16.0, 3.0], "score": 0.5},
    ]
    assert all(type(v) in (int, float) for r in results for v in (r["score"], *r["bbox"]))


def test_detections_to_coco_results_rejects_label_outside_mapping():
    prediction = {"boxes": np.zeros((1, 4)), "scores": np.ones(1), "labels": np.array([3])}
    with pytest.raises(ValueError, match="label 3"):
        detections_to_coco_results([prediction], [1], [1.0], [1, 2, 3])


def test_coco_evaluate_reports_minus_one_for_area_range_without_gt():
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]}],
    }
    stats = coco_evaluate(
        gt, [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 1}]
    )
    assert stats["APs"] == pytest.approx(1.0)
    assert stats["APm"] == stats["APl"] == stats["ARl"] == -1.0


def test_coco_evaluate_names_missing_ground_truth_parts():
    with pytest.raises(EvaluationInputError, match="'images'"):
        coco_evaluate({"categories": [], "annotations": []}, [])
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}]}
    gt["annotations"] = [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]
    with pytest.raises(EvaluationInputError, match="annotation 0: image_id 2"):
        coco_evaluate(gt, [])
