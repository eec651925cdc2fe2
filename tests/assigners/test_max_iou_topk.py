import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.assigners import MaxIoUAssigner, MaxIoUTopKAssigner
from tunedet.config.registry import build


def dense_anchors():
    gen = GridAnchorGenerator(strides=(8, 16, 32), octave_base_scale=4.0)
    levels = gen.grid_anchors([(16, 16), (8, 8), (4, 4)])
    return torch.cat(levels), [len(a) for a in levels]


def crowded_gt(g, num_images, max_gt, image_size=128):
    """Overlapping GTs: jittered copies of a few boxes, some images padded."""
    counts = torch.randint(1, max_gt + 1, (num_images,), generator=g)
    counts[0] = max_gt
    base = torch.rand(num_images, max_gt, 2, generator=g) * image_size * 0.6
    base[:, 1::2] = base[:, 0::2][:, : base[:, 1::2].shape[1]]  # pairs share a corner
    xy = base + torch.rand(num_images, max_gt, 2, generator=g) * 6
    wh = torch.rand(num_images, max_gt, 2, generator=g) * 40 + 20
    boxes = torch.cat([xy, xy + wh], dim=-1)
    labels = torch.randint(0, 4, (num_images, max_gt), generator=g)
    padding = torch.arange(max_gt)[None] >= counts[:, None]
    labels[padding] = -1
    boxes[padding] = 0.0
    return boxes, labels, counts


def reference_topk(anchors, boxes, k, pos_thr, neg_thr):
    """Per anchor: GTs claiming it as their best (last first), then GTs ≥ pos_thr by IoU."""
    num_anchors = len(anchors)
    codes = torch.zeros(num_anchors, k, dtype=torch.long)
    if len(boxes) == 0:
        return codes
    ious = tv_box_iou(boxes, anchors)  # (M, A)
    claims = [[] for _ in range(num_anchors)]
    for j in range(len(boxes)):
        best = ious[j].max()
        if best > 0:
            for a in (ious[j] == best).nonzero()[:, 0].tolist():
                claims[a].insert(0, j)  # later GTs first
    for a in range(num_anchors):
        order = sorted(range(len(boxes)), key=lambda j: (-float(ious[j, a]), j))
        chosen = claims[a] + [j for j in order if ious[j, a] >= pos_thr and j not in claims[a]]
        for slot, j in enumerate(chosen[:k]):
            codes[a, slot] = j + 1
    return codes


@pytest.mark.parametrize("k", [1, 3])
def test_max_iou_topk_equals_per_anchor_reference_and_max_iou(k):
    anchors, per_level = dense_anchors()
    g = torch.Generator().manual_seed(0)
    boxes, labels, counts = crowded_gt(g, num_images=3, max_gt=6)
    topk = MaxIoUTopKAssigner(k=k).assign(anchors, per_level, boxes, labels)
    plain = MaxIoUAssigner().assign(anchors, per_level, boxes, labels)
    assert topk.matched_topk.shape == (3, len(anchors), k)
    assert torch.equal(topk.matched, plain.matched)
    torch.testing.assert_close(topk.max_iou, plain.max_iou)
    for i in range(3):
        expected = reference_topk(anchors, boxes[i, : counts[i]], k, 0.5, 0.4)
        assert torch.equal(topk.matched_topk[i], expected)
    if k > 1:
        assert (topk.matched_topk[..., 1] > 0).any()  # some anchors serve two GTs


def test_max_iou_topk_anchor_serves_every_gt_above_threshold_best_first():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    # IoU with anchor 0: 10/12, 10/11, 10/13; each GT's best anchor is anchor 0
    gt = torch.tensor([[[0.0, 0.0, 12.0, 10.0], [0.0, 0.0, 10.0, 11.0], [0.0, 0.0, 13.0, 10.0]]])
    labels = torch.tensor([[0, 1, 2]])
    without_claims = MaxIoUTopKAssigner(k=2, match_low_quality=False)
    result = without_claims.assign(anchors, [2], gt, labels)
    assert result.matched_topk[0, 0].tolist() == [2, 1]  # by IoU, cut at k = 2
    assert result.matched_topk[0, 1].tolist() == [0, 0]
    with_claims = MaxIoUTopKAssigner(k=4).assign(anchors, [2], gt, labels)
    assert with_claims.matched_topk[0, 0].tolist() == [3, 2, 1, 0]  # claims, last GT first
    assert with_claims.matched[0, 0] == 3


def test_max_iou_topk_ties_keep_the_lower_gt_first():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[[0.0, 0.0, 12.0, 10.0], [0.0, 0.0, 10.0, 12.0]]])  # both IoU 10/12
    result = MaxIoUTopKAssigner(k=2, match_low_quality=False).assign(
        anchors, [1], gt, torch.tensor([[0, 0]])
    )
    assert result.matched_topk.tolist() == [[[1, 2]]]


def test_max_iou_topk_empty_outside_and_covering_gt():
    anchors, per_level = dense_anchors()
    assigner = MaxIoUTopKAssigner(k=2)
    empty = assigner.assign(anchors, per_level, torch.zeros(2, 0, 4), torch.zeros(2, 0).long())
    assert empty.matched_topk.shape == (2, len(anchors), 2)
    assert not empty.matched_topk.any() and not empty.matched.any()
    outside = torch.tensor([[[500.0, 500.0, 540.0, 540.0]]])
    result = assigner.assign(anchors, per_level, outside, torch.tensor([[0]]))
    assert not result.matched.any() and not result.matched_topk.any()
    cover = torch.tensor([[[0.0, 0.0, 128.0, 128.0]]])
    result = assigner.assign(anchors, per_level, cover, torch.tensor([[0]]))
    ious = tv_box_iou(cover[0], anchors)[0]
    expected = (ious >= 0.5) | (ious == ious.max())
    assert torch.equal(result.matched[0] == 1, expected)
    assert not result.matched_topk[..., 1].any()  # a single GT fills one slot only


def test_max_iou_topk_builds_from_registry():
    assigner = build("assigner", {"type": "max_iou_topk", "k": 3, "pos_iou_thr": 0.6})
    assert (assigner.k, assigner.pos_iou_thr) == (3, 0.6)
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MaxIoUTopKAssigner(pos_iou_thr=0.3, neg_iou_thr=0.5)
