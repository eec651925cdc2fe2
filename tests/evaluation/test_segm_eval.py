"""Mask (segm) evaluation: a mask detector's probabilities to COCO results (resized,
binarised, RLE-encoded) and their scores against pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tunedet.data import SyntheticShapes
from tunedet.evaluation import COCO_STAT_NAMES, coco_evaluate, detections_to_coco_results
from tunedet.evaluation.coco import masks_to_rles


def bilinear_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float64 bilinear resize with half-pixel centres (``align_corners=False``): output
    pixel ``j`` samples input ``(j + 0.5) · in / out - 0.5``, clamped at 0 and the border."""

    def weights(size_in: int, size_out: int) -> np.ndarray:
        src = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), size_in - 1)
        hi = np.minimum(lo + 1, size_in - 1)
        frac = src - lo
        matrix = np.zeros((size_out, size_in))
        np.add.at(matrix, (np.arange(size_out), lo), 1 - frac)
        np.add.at(matrix, (np.arange(size_out), hi), frac)
        return matrix

    return weights(image.shape[0], height) @ image @ weights(image.shape[1], width).T


def test_masks_to_rles_resizes_bilinearly_and_binarises_at_half():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 9, 13))
    rles = masks_to_rles(torch.as_tensor(probs, dtype=torch.float32), (20, 31))
    decoded = coco_mask.decode([dict(r, counts=r["counts"].encode()) for r in rles])
    for k in range(3):
        reference = bilinear_reference(probs[k], 20, 31)
        undecided = np.abs(reference - 0.5) < 1e-5  # float32 rounding may fall either way
        assert (decoded[:, :, k] == (reference >= 0.5))[~undecided].all()
        assert undecided.mean() < 0.01
    assert all(r["size"] == [20, 31] and isinstance(r["counts"], str) for r in rles)
    assert masks_to_rles(np.zeros((0, 9, 13), np.float32), (20, 31)) == []


def synthetic_predictions(dataset: SyntheticShapes) -> tuple[list[dict], list[int]]:
    """The ground truth as predictions: boxes, labels, and masks as probabilities."""
    predictions, image_ids = [], []
    for index in range(len(dataset)):
        sample = dataset[index]
        predictions.append(
            {
                "boxes": torch.as_tensor(sample["boxes"]),
                "scores": torch.ones(len(sample["boxes"])),
                "labels": torch.as_tensor(sample["labels"]),
                "masks": torch.as_tensor(sample["masks"], dtype=torch.float32),
            }
        )
        image_ids.append(sample["image_id"])
    return predictions, image_ids


def test_ground_truth_masks_as_predictions_give_segm_ap_one():
    dataset = SyntheticShapes(num_images=6, image_size=64, seed=2, masks=True, empty_fraction=0)
    gt = dataset.coco_ground_truth()
    predictions, image_ids = synthetic_predictions(dataset)
    results = detections_to_coco_results(
        predictions, image_ids, [1.0] * len(image_ids), [0, 1, 2], orig_sizes=[(64, 64)] * 6
    )
    assert len(results) == len(gt["annotations"])
    stats = coco_evaluate(gt, results, iou_type="segm")
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def test_a_mask_predicted_at_another_scale_is_resized_to_the_original_image():
    # the detector saw the image at scale 2: its (128, 128) masks map back to (64, 64)
    dataset = SyntheticShapes(num_images=3, image_size=64, seed=3, masks=True, empty_fraction=0)
    predictions, image_ids = synthetic_predictions(dataset)
    for pred in predictions:
        pred["boxes"] = pred["boxes"] * 2
        pred["masks"] = pred["masks"].repeat_interleave(2, 1).repeat_interleave(2, 2)
    results = detections_to_coco_results(
        predictions, image_ids, [2.0] * 3, [0, 1, 2], orig_sizes=[(64, 64)] * 3
    )
    # a 2x nearest upsampling, resized back bilinearly: exactly the original masks
    expected = [a["segmentation"] for a in dataset.coco_ground_truth()["annotations"]]
    assert [r["segmentation"] for r in results] == expected


def random_mask_case(seed: int) -> tuple[dict, list[dict], list[dict]]:
    """GT ellipses on 5 images (one crowd region) and noisy, shifted or random predicted
    masks."""
    rng = np.random.default_rng(seed)
    height, width = 96, 112
    images, annotations, predictions = [], [], []
    rows, cols = np.mgrid[:height, :width]

    def blob() -> np.ndarray:  # a filled ellipse, 4 to 70 px across: small and medium areas
        a, b = rng.uniform(2, 35, 2)
        cx, cy = rng.uniform(a, width - a), rng.uniform(b, height - b)
        return (((cols + 0.5 - cx) / a) ** 2 + ((rows + 0.5 - cy) / b) ** 2 <= 1).astype(np.uint8)

    for image_id in range(1, 6):
        images.append({"id": image_id, "width": width, "height": height, "file_name": "x"})
        masks, labels = [], []
        for k in range(int(rng.integers(1, 5))):
            mask = blob()
            rle = coco_mask.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            label = int(rng.integers(0, 2))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": coco_mask.toBbox(rle).tolist(),
                    "area": float(mask.sum()),
                    "iscrowd": int(image_id == 3 and k == 0),
                    "segmentation": rle,
                }
            )
            masks.append(mask)
            labels.append(label)
        probs, boxes, pred_labels = [], [], []
        for mask, label in zip(masks, labels, strict=True):  # jittered copies of the GT
            noisy = np.clip(mask + rng.normal(0, 0.2, mask.shape), 0, 1)
            probs.append(np.roll(noisy, rng.integers(-1, 2, 2), axis=(0, 1)))
            pred_labels.append(label if rng.random() < 0.8 else 1 - label)
        for _ in range(int(rng.integers(0, 3))):  # false positives
            probs.append(blob().astype(np.float64))
            pred_labels.append(int(rng.integers(0, 2)))
        for p in probs:
            on = np.argwhere(p >= 0.5)
            (y0, x0), (y1, x1) = on.min(0), on.max(0) + 1
            boxes.append([x0, y0, x1, y1])
        predictions.append(
            {
                "boxes": np.asarray(boxes, np.float32),
                "scores": rng.random(len(probs)),
                "labels": np.asarray(pred_labels),
                "masks": np.asarray(probs, np.float32),
            }
        )
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 0}, {"id": 1}]}
    results = detections_to_coco_results(
        predictions, list(range(1, 6)), [1.0] * 5, [0, 1], orig_sizes=[(height, width)] * 5
    )
    return gt, results, predictions


def pycocotools_segm(gt: dict, results: list[dict]) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(coco_gt, coco_dt, "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(COCO_STAT_NAMES, map(float, evaluator.stats), strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segm_stats_of_converted_results_equal_pycocotools(seed):
    gt, results, predictions = random_mask_case(seed)
    for result, mask in zip(
        results, np.concatenate([p["masks"] for p in predictions]), strict=True
    ):
        decoded = coco_mask.decode(dict(result["segmentation"]))
        assert np.array_equal(decoded, (mask >= 0.5).astype(np.uint8))  # same size: no resize
    ours = coco_evaluate(gt, results, iou_type="segm")
    reference = pycocotools_segm(gt, results)
    assert 0.05 < ours["AP50"] < 0.99  # neither trivial nor empty
    for name in COCO_STAT_NAMES:
        assert ours[name] == pytest.approx(reference[name], abs=1e-6), name


def test_masks_without_original_sizes_are_refused():
    pred = {
        "boxes": torch.zeros((1, 4)),
        "scores": torch.ones(1),
        "labels": torch.zeros(1, dtype=torch.long),
        "masks": torch.zeros((1, 8, 8)),
    }
    with pytest.raises(ValueError, match="image 7: predictions carry masks: pass orig_sizes"):
        detections_to_coco_results([pred], [7], [1.0], [0])
    results = detections_to_coco_results([pred], [7], [1.0], [0], orig_sizes=[(8, 8)])
    assert results[0]["segmentation"]["size"] == [8, 8]
