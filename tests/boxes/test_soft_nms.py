"""Batched Soft-NMS against a float64 one-box-per-step reference and torchvision's NMS."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import nms

from tunedet.boxes.nms import batched_soft_nms, soft_nms_decay


def reference_soft_nms(boxes, scores, idxs, method, iou_threshold, sigma, score_threshold):
    """Bodla et al. 2017, Algorithm 1, one box per step in float64 per group; returns
    {index: final score} of the kept boxes and the selection order per group."""
    boxes = boxes.double().tolist()
    scores = scores.double().tolist()
    groups = idxs.tolist()
    kept, order = {}, {}
    for group in sorted(set(groups)):
        remaining = {i for i, g in enumerate(groups) if g == group and scores[i] >= score_threshold}
        current = {i: scores[i] for i in remaining}
        order[group] = []
        while remaining:
            best = max(remaining, key=lambda i: current[i])
            remaining.remove(best)
            kept[best] = current[best]
            order[group].append(best)
            for i in list(remaining):
                u = _iou64(boxes[best], boxes[i])
                if method == "linear":
                    factor = 1 - u if u >= iou_threshold else 1.0
                else:
                    factor = math.exp(-u * u / sigma)
                current[i] *= factor
                if current[i] < score_threshold:
                    remaining.remove(i)
    return kept, order


def _iou64(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def random_boxes(n, seed, size=200.0, clusters=None):
    g = torch.Generator().manual_seed(seed)
    if clusters is None:
        xy = torch.rand(n, 2, generator=g) * size
        wh = torch.rand(n, 2, generator=g) * size / 4 + 2
    else:  # jittered copies of a few objects: heavy overlap
        centres = torch.rand(clusters, 2, generator=g) * size
        sizes = torch.rand(clusters, 2, generator=g) * size / 4 + 4
        which = torch.randint(0, clusters, (n,), generator=g)
        wh = sizes[which] * (1 + 0.2 * torch.randn(n, 2, generator=g)).clamp(min=0.3)
        xy = centres[which] + 0.1 * sizes[which] * torch.randn(n, 2, generator=g)
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.randperm(n, generator=g).float().add(1) / (n + 1)  # distinct scores
    return boxes, scores


def assert_matches_reference(boxes, scores, idxs, method, thr, sigma, score_thr):
    keep, kept_scores = batched_soft_nms(boxes, scores, idxs, method, thr, sigma, score_thr)
    ref, ref_order = reference_soft_nms(boxes, scores, idxs, method, thr, sigma, score_thr)
    assert sorted(keep.tolist()) == sorted(ref)
    expected = torch.tensor([ref[i] for i in keep.tolist()], dtype=torch.float64)
    torch.testing.assert_close(kept_scores.double(), expected, rtol=1e-5, atol=1e-7)
    assert (kept_scores[:-1] >= kept_scores[1:]).all()
    for group, order in ref_order.items():  # selection order within each group
        assert [i for i in keep.tolist() if idxs[i] == group] == order


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("clusters", [None, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_nms_matches_float64_reference(method, clusters, seed):
    boxes, scores = random_boxes(100, seed, clusters=clusters)
    idxs = torch.zeros(100, dtype=torch.long)
    assert_matches_reference(boxes, scores, idxs, method, 0.3, 0.5, 0.001)


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_keeps_groups_apart(method):
    boxes, scores = random_boxes(160, 5, clusters=8)
    idxs = torch.randint(0, 4, (160,), generator=torch.Generator().manual_seed(3))
    assert_matches_reference(boxes, scores, idxs, method, 0.4, 0.3, 0.01)
    # the same boxes in another group decay nothing: each group alone gives the same result
    keep, kept_scores = batched_soft_nms(boxes, scores, idxs, method, 0.4, 0.3, 0.01)
    for group in range(4):
        mine = (idxs == group).nonzero().flatten()
        alone, alone_scores = batched_soft_nms(
            boxes[mine], scores[mine], None, method, 0.4, 0.3, 0.01
        )
        in_batch = idxs[keep] == group
        assert mine[alone].tolist() == keep[in_batch].tolist()
        torch.testing.assert_close(alone_scores, kept_scores[in_batch])


def test_soft_nms_high_score_threshold_drops_decayed_boxes():
    boxes, scores = random_boxes(120, 7, clusters=5)
    idxs = torch.zeros(120, dtype=torch.long)
    assert_matches_reference(boxes, scores, idxs, "gaussian", 0.3, 0.5, 0.4)


def test_gaussian_with_vanishing_sigma_is_nms_at_zero_overlap():
    """exp(−u²/σ) → 0 for every u > 0 as σ → 0: any overlap with a kept box removes a
    box, which is hard NMS that suppresses IoU > 0 (torchvision ``nms(..., 0.0)``)."""
    boxes, scores = random_boxes(300, 11)
    keep, kept_scores = batched_soft_nms(boxes, scores, None, "gaussian", sigma=1e-12)
    expected = nms(boxes, scores, 0.0)
    assert keep.tolist() == expected.tolist()
    torch.testing.assert_close(kept_scores, scores[expected])  # kept boxes never decayed


def test_linear_on_duplicates_and_disjoint_boxes_is_nms():
    """When every overlap is an exact duplicate (IoU 1, factor 1 − 1 = 0) and other pairs
    are disjoint (factor 1), linear Soft-NMS keeps what hard NMS keeps, scores unchanged."""
    g = torch.Generator().manual_seed(4)
    cells = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1)
    corner = cells.reshape(-1, 2) * 30 + torch.rand(64, 2, generator=g) * 5
    base = torch.cat([corner, corner + 5 + torch.rand(64, 2, generator=g) * 20], dim=1)
    boxes = base.repeat_interleave(torch.randint(1, 4, (64,), generator=g), dim=0)
    scores = torch.randperm(len(boxes), generator=g).float().add(1) / (len(boxes) + 1)
    for thr in (0.3, 0.7):
        keep, kept_scores = batched_soft_nms(boxes, scores, None, "linear", thr)
        expected = nms(boxes, scores, thr)
        assert keep.tolist() == expected.tolist()
        torch.testing.assert_close(kept_scores, scores[expected])


def test_soft_nms_decay_closed_forms():
    u = torch.rand(100, dtype=torch.float64)
    torch.testing.assert_close(soft_nms_decay(u, "gaussian", sigma=0.3), torch.exp(-(u**2) / 0.3))
    expected = torch.where(u >= 0.4, 1 - u, torch.ones_like(u))
    torch.testing.assert_close(soft_nms_decay(u, "linear", iou_threshold=0.4), expected)


def test_soft_nms_empty_and_bad_method():
    keep, kept_scores = batched_soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.numel() == 0 and kept_scores.numel() == 0
    with pytest.raises(ValueError, match="Soft-NMS method"):
        batched_soft_nms(torch.zeros(1, 4), torch.ones(1), method="cubic")


def test_postprocess_soft_gaussian_with_vanishing_sigma_equals_hard_nms_at_zero():
    """The detector's ``nms_type: soft_gaussian`` path (σ → 0) reduces to its hard NMS path
    at ``nms_iou = 0`` over the whole batch of (image, class) groups."""
    from tunedet.boxes import DeltaBoxCoder
    from tunedet.models.postprocess import postprocess_detections

    g = torch.Generator().manual_seed(0)
    anchors, _ = random_boxes(300, 8, size=120.0)
    cls_logits = torch.randn(2, 300, 3, generator=g)
    box_deltas = torch.randn(2, 300, 4, generator=g) * 0.1
    sizes = torch.tensor([[128, 128], [100, 120]])
    common = (cls_logits, box_deltas, anchors, [200, 100], DeltaBoxCoder(), sizes)
    hard = postprocess_detections(*common, nms_iou=0.0, pre_nms_topk=150)
    soft = postprocess_detections(
        *common, nms_iou=0.0, pre_nms_topk=150, nms_type="soft_gaussian", soft_nms_sigma=1e-12
    )
    for h, s in zip(hard, soft, strict=True):
        assert len(h["scores"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(s[key], h[key])
