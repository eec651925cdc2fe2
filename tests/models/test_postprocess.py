import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms

from tunedet.models.postprocess import postprocess_detections


class TorchvisionDeltaCoder:
    """Stand-in box coder: torchvision's (dx, dy, dw, dh) decoding with unit weights."""

    def __init__(self):
        self.coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

    def decode(self, anchors, deltas):
        return self.coder.decode_single(deltas, anchors)


def random_inputs(seed, num_images=3, level_sizes=(64, 16, 4), num_classes=4, image_size=64):
    g = torch.Generator().manual_seed(seed)
    num_anchors = sum(level_sizes)
    centres = torch.rand(num_anchors, 2, generator=g) * image_size
    sizes = torch.rand(num_anchors, 2, generator=g) * 24 + 4
    anchors = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    logits = torch.randn(num_images, num_anchors, num_classes, generator=g) * 2 - 1
    deltas = torch.randn(num_images, num_anchors, 4, generator=g) * 0.3
    image_sizes = torch.tensor([[image_size, image_size], [48, 56], [40, 64]])[:num_images]
    return logits, deltas, anchors, list(level_sizes), image_sizes


def reference_postprocess(
    logits, deltas, anchors, per_level, coder, image_sizes, score_thr, topk, nms_iou, max_dets
):
    """torchvision RetinaNet's per-image, per-level loop."""
    results = []
    num_classes = logits.shape[2]
    for i in range(logits.shape[0]):
        all_boxes, all_scores, all_labels = [], [], []
        for lvl_logits, lvl_deltas, lvl_anchors in zip(
            logits[i].split(per_level),
            deltas[i].split(per_level),
            anchors.split(per_level),
            strict=True,
        ):
            scores = lvl_logits.sigmoid().flatten()
            idx = torch.where(scores > score_thr)[0]
            scores = scores[idx]
            scores, order = scores.topk(min(topk, len(idx)))
            idx = idx[order]
            anchor_idx, labels = idx // num_classes, idx % num_classes
            boxes = coder.decode(lvl_anchors[anchor_idx], lvl_deltas[anchor_idx])
            h, w = image_sizes[i].tolist()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            all_boxes.append(boxes)
            all_scores.append(scores)
            all_labels.append(labels)
        boxes, scores, labels = torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)
        keep = batched_nms(boxes, scores, labels, nms_iou)[:max_dets]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


def assert_same_detections(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        # order by score (ties are possible only between identical scores)
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["boxes"], b["boxes"])
        assert torch.equal(a["labels"], b["labels"])


def test_postprocess_equals_per_image_reference():
    coder = TorchvisionDeltaCoder()
    for seed, (thr, topk, nms_iou, max_dets) in enumerate(
        [(0.05, 1000, 0.5, 100), (0.3, 10, 0.5, 100), (0.05, 50, 0.3, 7), (0.2, 1000, 0.7, 1000)]
    ):
        logits, deltas, anchors, per_level, sizes = random_inputs(seed)
        args = (logits, deltas, anchors, per_level, coder, sizes)
        ours = postprocess_detections(
            *args, score_thr=thr, pre_nms_topk=topk, nms_iou=nms_iou, max_dets=max_dets
        )
        ref = reference_postprocess(*args, thr, topk, nms_iou, max_dets)
        assert_same_detections(ours, ref)


def test_postprocess_clips_boxes_to_each_image():
    coder = TorchvisionDeltaCoder()
    anchors = torch.tensor([[-10.0, -10.0, 30.0, 30.0], [40.0, 20.0, 90.0, 70.0]])
    logits = torch.full((2, 2, 1), 5.0)
    deltas = torch.zeros(2, 2, 4)
    sizes = torch.tensor([[50, 60], [64, 80]])  # (h, w)
    out = postprocess_detections(logits, deltas, anchors, [2], coder, sizes)
    expected = [
        torch.tensor([[0.0, 0.0, 30.0, 30.0], [40.0, 20.0, 60.0, 50.0]]),
        torch.tensor([[0.0, 0.0, 30.0, 30.0], [40.0, 20.0, 80.0, 64.0]]),
    ]
    for det, boxes in zip(out, expected, strict=True):
        got = det["boxes"][det["boxes"][:, 0].argsort()]
        torch.testing.assert_close(got, boxes)


def test_postprocess_keeps_at_most_max_dets_best_scores():
    coder = TorchvisionDeltaCoder()
    # 30 disjoint anchors along a line, one class, increasing scores
    xs = torch.arange(30, dtype=torch.float32) * 20
    anchors = torch.stack([xs, torch.zeros(30), xs + 10, torch.full((30,), 10.0)], dim=1)
    logits = torch.linspace(-1, 3, 30).reshape(1, 30, 1)
    out = postprocess_detections(
        logits, torch.zeros(1, 30, 4), anchors, [30], coder, torch.tensor([[100, 1000]]), max_dets=5
    )[0]
    assert len(out["scores"]) == 5
    torch.testing.assert_close(out["scores"], logits[0, -5:, 0].flip(0).sigmoid())


def test_postprocess_drops_scores_at_or_below_threshold():
    coder = TorchvisionDeltaCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    scores = torch.tensor([[[0.6, 0.04], [0.05, 0.3]]])
    logits = torch.logit(scores)
    out = postprocess_detections(
        logits,
        torch.zeros(1, 2, 4),
        anchors,
        [2],
        coder,
        torch.tensor([[100, 100]]),
        score_thr=0.05,
    )[0]
    torch.testing.assert_close(out["scores"], torch.tensor([0.6, 0.3]))
    assert out["labels"].tolist() == [0, 1]


def test_postprocess_returns_empty_results_per_image_when_nothing_scores():
    coder = TorchvisionDeltaCoder()
    logits, deltas, anchors, per_level, sizes = random_inputs(0)
    out = postprocess_detections(logits - 100, deltas, anchors, per_level, coder, sizes)
    assert len(out) == 3
    for det in out:
        assert (
            det["boxes"].shape == (0, 4)
            and det["scores"].shape == (0,)
            and det["labels"].shape == (0,)
        )


def test_postprocess_applies_nms_per_class_only():
    coder = TorchvisionDeltaCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    logits = torch.logit(torch.tensor([[[0.9, 0.01], [0.8, 0.7]]]))
    out = postprocess_detections(
        logits, torch.zeros(1, 2, 4), anchors, [2], coder, torch.tensor([[20, 20]])
    )[0]
    # the second anchor's class-0 score is suppressed by the first; its class-1 score survives
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.7]))
    assert out["labels"].tolist() == [0, 1]
