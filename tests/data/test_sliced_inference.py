"""Sliced inference: tile detections map back and merge into the full-image boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import nms

from tunedet.config.schema import SlicedConfig
from tunedet.engine.sliced_inference import (
    merge_detections,
    pairwise_match,
    sliced_predict,
    sliced_predict_dataset,
)


class BlobDetector(torch.nn.Module):
    """Finds every object painted with its own value v > 0 in channel 0 of a raw image:
    box = bounding box of the pixels equal to v, label = v % 3, score = ``score(v, box)``."""

    def __init__(self, score=lambda v, box: 0.9) -> None:
        super().__init__()
        self.score = score
        self.calls = 0

    def predict(self, images, image_sizes):
        out = []
        for image, (h, w) in zip(images, image_sizes.tolist(), strict=True):
            self.calls += 1
            plane = image[0, :h, :w].round().long()
            boxes, scores, labels = [], [], []
            for v in plane.unique().tolist():
                if v == 0:
                    continue
                ys, xs = torch.nonzero(plane == v, as_tuple=True)
                box = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
                boxes.append(box)
                scores.append(self.score(v, box))
                labels.append(v % 3)
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.tensor(scores, dtype=torch.float32),
                    "labels": torch.tensor(labels, dtype=torch.long),
                }
            )
        return out


def painted_image(height=200, width=300, size_range=(8, 30), count=25, seed=0):
    """Non-overlapping rectangles with values 1..count; returns (image, boxes, labels)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    boxes = []
    while len(boxes) < count:
        w, h = rng.integers(*size_range, 2)
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        if (image[max(0, y0 - 1) : y0 + h + 1, max(0, x0 - 1) : x0 + w + 1, 0] > 0).any():
            continue
        boxes.append([x0, y0, x0 + w, y0 + h])
        image[y0 : y0 + h, x0 : x0 + w, 0] = len(boxes)
    labels = [v % 3 for v in range(1, count + 1)]
    return image, np.array(boxes, np.float32), np.array(labels)


def sorted_rows(boxes, labels):
    rows = np.concatenate([np.asarray(boxes, np.float64), np.asarray(labels)[:, None]], 1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("partial_scores_higher", [False, True])
def test_objects_cut_by_tile_borders_merge_back_to_the_full_image_boxes(partial_scores_higher):
    image, boxes, labels = painted_image()
    full = {tuple(b) for b in boxes.astype(int).tolist()}

    def score(v, box):  # tile-local boxes: a partial one is smaller than the full object
        return 0.5 if partial_scores_higher else 0.9

    model = BlobDetector(score)
    pred = sliced_predict(model, image, [], torch.device("cpu"), tile=96, overlap=0.4)
    tiles_seen = model.calls
    assert tiles_seen > 6  # several tiles, objects crossing their borders
    np.testing.assert_array_equal(
        sorted_rows(pred["boxes"].numpy(), pred["labels"].numpy()), sorted_rows(boxes, labels)
    )
    assert {tuple(b) for b in pred["boxes"].int().tolist()} == full


def test_plain_nms_keeps_partial_duplicates_that_nmm_merges():
    image, boxes, labels = painted_image(seed=1)
    model = BlobDetector()
    pred = sliced_predict(
        model, image, [], torch.device("cpu"), tile=96, overlap=0.4, merge="nms", match_metric="iou"
    )
    assert len(pred["boxes"]) > len(boxes)  # NMS by IoU leaves the cut-off parts


def reference_greedy(boxes, scores, labels, metric, thr, merge):
    """Float64 loop over pairs: the greedy rule of the module docstring."""
    order = np.argsort(-scores, kind="stable")
    alive = np.ones(len(boxes), bool)
    out = []
    for a, i in enumerate(order):
        if not alive[i]:
            continue
        members, box, grew = [i], boxes[i], True
        alive[i] = False
        while grew:  # NMS: one pass against the kept box; NMM: until the union stops growing
            grew = False
            for j in order[a + 1 :]:
                if not alive[j] or labels[j] != labels[i]:
                    continue
                lt = np.maximum(box[:2], boxes[j, :2])
                rb = np.minimum(box[2:], boxes[j, 2:])
                inter = np.prod(np.clip(rb - lt, 0, None))
                ai, aj = np.prod(box[2:] - box[:2]), np.prod(boxes[j, 2:] - boxes[j, :2])
                m = inter / (ai + aj - inter) if metric == "iou" else inter / min(ai, aj)
                if m >= thr:
                    alive[j] = False
                    members.append(j)
                    grew = merge == "nmm"
            if merge == "nmm":
                b = boxes[members]
                box = np.r_[b[:, :2].min(0), b[:, 2:].max(0)]
        out.append((box, scores[i], labels[i]))
    return out


@pytest.mark.parametrize("metric", ["iou", "ios"])
@pytest.mark.parametrize("merge", ["nms", "nmm"])
def test_merge_matches_a_float64_reference_on_random_boxes(metric, merge):
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 20, (60, 2))], 1)
    scores = rng.permutation(60) / 60.0 + 0.01
    labels = rng.integers(0, 3, 60)
    out = merge_detections(
        torch.tensor(boxes), torch.tensor(scores), torch.tensor(labels), merge, metric, 0.4
    )
    ref = reference_greedy(boxes, scores, labels, metric, 0.4, merge)
    assert len(out["boxes"]) == len(ref)
    np.testing.assert_allclose(out["boxes"].numpy(), np.stack([r[0] for r in ref]), rtol=1e-12)
    np.testing.assert_allclose(out["scores"].numpy(), [r[1] for r in ref])
    assert out["labels"].tolist() == [int(r[2]) for r in ref]


def test_nms_by_iou_equals_torchvision_per_class():
    rng = np.random.default_rng(4)
    xy = rng.uniform(0, 50, (40, 2))
    boxes = torch.tensor(
        np.concatenate([xy, xy + rng.uniform(5, 20, (40, 2))], 1), dtype=torch.float32
    )
    scores = torch.tensor(rng.uniform(0, 1, 40), dtype=torch.float32)
    labels = torch.zeros(40, dtype=torch.long)
    out = merge_detections(boxes, scores, labels, "nms", "iou", 0.5)
    keep = nms(boxes, scores, 0.5)
    assert torch.equal(out["boxes"], boxes[keep])


def test_pairwise_ios_is_one_for_a_box_inside_another():
    outer = torch.tensor([0.0, 0.0, 10.0, 10.0])
    inner = torch.tensor([[2.0, 2.0, 5.0, 6.0], [20.0, 20.0, 30.0, 30.0]])
    np.testing.assert_allclose(pairwise_match(outer, inner, "ios").numpy(), [1.0, 0.0])
    np.testing.assert_allclose(pairwise_match(outer, inner, "iou").numpy(), [0.12, 0.0])


def test_sliced_predict_dataset_gives_coco_results_in_image_pixels():
    image, boxes, labels = painted_image(seed=2, count=10)

    class OneImage:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"image": image, "boxes": boxes, "labels": labels, "image_id": 7, "file": "x"}

        def coco_ground_truth(self):
            return {"images": [], "annotations": [], "categories": [{"id": c} for c in range(3)]}

    sliced = SlicedConfig(tile=96, overlap=0.4)
    results = sliced_predict_dataset(BlobDetector(), OneImage(), sliced, [], torch.device("cpu"))
    got = sorted(tuple(r["bbox"]) for r in results)
    want = sorted((b[0], b[1], b[2] - b[0], b[3] - b[1]) for b in boxes.tolist())
    assert got == want and {r["image_id"] for r in results} == {7}


@pytest.mark.parametrize("merge", ["nms", "nmm"])
def test_an_image_without_detections_gives_empty_tensors(merge):
    pred = sliced_predict(
        BlobDetector(),
        np.zeros((100, 150, 3), np.uint8),
        [],
        torch.device("cpu"),
        tile=64,
        merge=merge,
    )
    assert pred["boxes"].shape == (0, 4) and len(pred["scores"]) == len(pred["labels"]) == 0


def test_boxes_of_one_tile_never_merge_with_each_other():
    # two neighbouring crowns seen by tile 0, and the left one's cut-off part in tile 1
    boxes = torch.tensor([[0.0, 0, 10, 10], [6, 0, 16, 10], [0, 0, 4, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    labels = torch.zeros(3, dtype=torch.long)
    out = merge_detections(boxes, scores, labels, "nmm", "ios", 0.3, torch.tensor([0, 0, 1]))
    assert out["boxes"].tolist() == [[0, 0, 10, 10], [6, 0, 16, 10]]
    chained = merge_detections(boxes, scores, labels, "nmm", "ios", 0.3)  # no tiles given
    assert chained["boxes"].tolist() == [[0, 0, 16, 10]]


class OneImage:
    """A dataset of one painted image (image id 7)."""

    def __init__(self, image, boxes, labels):
        self.sample = {"image": image, "boxes": boxes, "labels": labels, "image_id": 7, "file": ""}

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return dict(self.sample)

    def coco_ground_truth(self):
        return {"images": [], "annotations": [], "categories": [{"id": c} for c in range(3)]}


def test_predict_dataset_hands_eval_sliced_and_score_thr_to_the_tiles():
    from tunedet.data.tiling import make_tiles
    from tunedet.engine.evaluator import EvalSettings, predict_dataset

    image, boxes, labels = painted_image(seed=2, count=10)
    detector = BlobDetector(score=lambda v, box: 0.9 if v % 2 else 0.1)
    settings = EvalSettings(
        transforms=[],
        batch_size=1,
        score_thr=0.5,
        sliced=SlicedConfig(tile=96, overlap=0.4),
        progress=False,
    )
    results = predict_dataset(detector, OneImage(image, boxes, labels), settings, "cpu")
    got = sorted(tuple(r["bbox"]) for r in results)
    odd = [b for v, b in enumerate(boxes.tolist(), start=1) if v % 2]  # score 0.9 >= 0.5
    assert got == sorted((b[0], b[1], b[2] - b[0], b[3] - b[1]) for b in odd)
    assert detector.calls == len(make_tiles(image.shape[:2], 96, 0.4))  # tiles, not the image


def test_predict_dataset_wraps_the_detector_in_eval_tta():
    from tunedet.config.schema import TTAConfig
    from tunedet.engine.evaluator import EvalSettings, predict_dataset

    image, boxes, labels = painted_image(seed=3, count=4)
    dataset = OneImage(image, boxes, labels)
    plain, flipped = BlobDetector(), BlobDetector()
    settings = EvalSettings(transforms=[], batch_size=1, progress=False)
    predict_dataset(plain, dataset, settings, "cpu")
    tta = TTAConfig(flips=["h", "v"])
    predict_dataset(flipped, dataset, EvalSettings([], 1, tta=tta, progress=False), "cpu")
    assert (plain.calls, flipped.calls) == (1, 3)  # the image, then its two flips


def test_the_api_detector_runs_eval_sliced_on_tiles():
    from tunedet.api import Detector
    from tunedet.config.loader import load_config
    from tunedet.data.tiling import make_tiles

    cfg = load_config(
        "retinanet/demo", ["eval.sliced={tile: 96, overlap: 0.4}", "data.val_transforms=[]"]
    )
    image, boxes, labels = painted_image(seed=2, count=10)
    model = BlobDetector()
    found = Detector(model, cfg, torch.device("cpu")).predict(image)[0]
    np.testing.assert_allclose(
        sorted_rows(found.boxes, found.labels), sorted_rows(boxes, labels), atol=1e-4
    )
    assert model.calls == len(make_tiles(image.shape[:2], 96, 0.4))
