"""evaluate_files: metrics from JSON files and one-line errors that name the file."""

from __future__ import annotations

import json

import pytest

from tunedet.evaluation import (
    COCO_STAT_NAMES,
    EvaluationInputError,
    coco_evaluate,
    evaluate_files,
    voc_evaluate,
)

GT = {
    "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
    "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100, 100, 60, 80], "difficult": 1},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [20, 30, 100, 120]},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [150, 10, 20, 20]},
    ],
}
DETS = [
    {"image_id": 1, "category_id": 1, "bbox": [12, 11, 48, 40], "score": 0.9},
    {"image_id": 1, "category_id": 2, "bbox": [100, 100, 60, 80], "score": 0.8},
    {"image_id": 2, "category_id": 2, "bbox": [25, 30, 95, 110], "score": 0.7},
    {"image_id": 2, "category_id": 1, "bbox": [0, 150, 30, 30], "score": 0.6},
]


@pytest.fixture
def files(tmp_path):
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(GT))
    dets_path.write_text(json.dumps(DETS))
    return gt_path, dets_path


def test_evaluate_files_coco_matches_coco_evaluate(files):
    out = evaluate_files(*files, metric="coco")
    assert out["metric"] == "coco"
    assert list(out["stats"]) == list(COCO_STAT_NAMES)
    assert out["stats"] == coco_evaluate(GT, DETS)
    assert set(out["per_class"]) == set(out["per_class_ap50"]) == {"cat", "dog"}
    json.dumps(out)  # ready for --json


@pytest.mark.parametrize(("metric", "use_07"), [("voc07", True), ("voc12", False)])
def test_evaluate_files_voc_matches_voc_evaluate(files, metric, use_07):
    out = evaluate_files(*files, metric=metric)
    assert out.pop("metric") == metric
    assert out.pop("detection")["iou_thr"] == 0.5  # operating-point metrics come with every metric
    assert out == voc_evaluate(GT, DETS, use_07_metric=use_07)
    assert out["counts"]["dog"]["ignored"] == 1


def test_evaluate_files_names_missing_file(files, tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(EvaluationInputError, match=r"detections file not found: .*nope\.json"):
        evaluate_files(files[0], missing)
    with pytest.raises(EvaluationInputError, match=r"ground-truth file not found"):
        evaluate_files(missing, files[1])


def test_evaluate_files_names_file_and_line_of_malformed_json(files):
    gt_path, dets_path = files
    dets_path.write_text('[\n  {"image_id": 1,\n   "bbox": [1, 2, 3, 4],,\n]\n')
    with pytest.raises(EvaluationInputError) as info:
        evaluate_files(gt_path, dets_path)
    message = str(info.value)
    assert str(dets_path) in message and "line 3" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"annotations": []}, "was the ground-truth file passed as --dets"),
        ({"a": 1}, "got a JSON dict"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], "item 0 lacks 'score'"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1}], "bbox must be 4"),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": "x"}], "score"),
        ([3], "item 0 is not an object"),
    ],
)
def test_evaluate_files_rejects_results_that_are_not_a_detection_list(files, content, expected):
    gt_path, dets_path = files
    dets_path.write_text(json.dumps(content))
    with pytest.raises(EvaluationInputError, match=expected):
        evaluate_files(gt_path, dets_path)


def test_evaluate_files_names_detection_on_unknown_image(files):
    gt_path, dets_path = files
    dets_path.write_text(json.dumps([*DETS, {**DETS[0], "image_id": 42}]))
    with pytest.raises(EvaluationInputError, match="image_id 42"):
        evaluate_files(gt_path, dets_path)


def test_evaluate_files_rejects_unknown_metric(files):
    with pytest.raises(EvaluationInputError, match="voc07"):
        evaluate_files(*files, metric="map")
