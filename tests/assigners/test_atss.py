import torch
from torchvision.ops import box_iou as tv_box_iou

from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.assigners.atss import ATSSAssigner
from tunedet.config.registry import build


def level_anchors(sizes=((16, 16), (8, 8), (4, 4)), strides=(8, 16, 32), scales=1):
    gen = GridAnchorGenerator(
        strides=strides, octave_base_scale=8.0, scales_per_octave=scales, ratios=(1.0,)
    )
    levels = gen.grid_anchors(list(sizes))
    return torch.cat(levels), [len(a) for a in levels]


def random_gt(g, num_images, max_gt, image_size=128):
    counts = torch.randint(0, max_gt + 1, (num_images,), generator=g)
    counts[0] = max_gt
    xy = torch.rand(num_images, max_gt, 2, generator=g) * image_size * 0.8
    wh = torch.rand(num_images, max_gt, 2, generator=g) * 90 + 6
    boxes = torch.cat([xy, (xy + wh).clamp(max=image_size)], dim=-1)
    labels = torch.randint(0, 3, (num_images, max_gt), generator=g)
    padding = torch.arange(max_gt)[None] >= counts[:, None]
    labels[padding] = -1
    boxes[padding] = 0.0
    return boxes, labels, counts


def reference_atss(anchors, per_level, boxes, topk):
    """The paper's steps for one image, one GT at a time."""
    matched = torch.zeros(len(anchors), dtype=torch.long)
    best = torch.full((len(anchors),), -1.0)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    for j, gt in enumerate(boxes):
        gt_centre = (gt[:2] + gt[2:]) / 2
        candidates = []
        for start, count in zip(
            [0, *torch.tensor(per_level).cumsum(0).tolist()[:-1]], per_level, strict=True
        ):
            dist = ((centres[start : start + count] - gt_centre) ** 2).sum(1).sqrt()
            candidates += (dist.argsort()[: min(topk, count)] + start).tolist()
        ious = tv_box_iou(gt[None], anchors[candidates])[0]
        threshold = ious.mean() + ious.std()
        for anchor, iou in zip(candidates, ious.tolist(), strict=True):
            cx, cy = centres[anchor].tolist()
            inside = min(cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy) > 0
            if iou >= threshold and inside and iou > best[anchor]:
                best[anchor] = iou
                matched[anchor] = j + 1
    return matched


def test_atss_equals_per_gt_reference_loop():
    anchors, per_level = level_anchors()
    g = torch.Generator().manual_seed(0)
    for topk in (9, 4):
        boxes, labels, counts = random_gt(g, num_images=4, max_gt=6)
        result = ATSSAssigner(topk=topk).assign(anchors, per_level, boxes, labels)
        assert result.matched.shape == (4, len(anchors))
        for i in range(4):
            expected = reference_atss(anchors, per_level, boxes[i, : counts[i]], topk)
            assert torch.equal(result.matched[i], expected)
        assert (result.matched > 0).any()


def test_atss_picks_topk_per_level_at_most():
    anchors, per_level = level_anchors()
    boxes = torch.tensor([[[30.0, 30.0, 90.0, 80.0]]])
    result = ATSSAssigner(topk=9).assign(anchors, per_level, boxes, torch.tensor([[1]]))
    positives = result.matched[0] > 0
    for level in positives.split(per_level):
        assert 0 < level.sum() <= 9 or level.sum() == 0
    assert 0 < positives.sum() <= 27
    # every positive centre lies inside the GT
    centres = (anchors[positives, :2] + anchors[positives, 2:]) / 2
    assert ((centres > boxes[0, 0, :2]) & (centres < boxes[0, 0, 2:])).all()


def test_atss_without_gt_makes_every_anchor_background():
    anchors, per_level = level_anchors()
    assigner = ATSSAssigner()
    empty = assigner.assign(
        anchors, per_level, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long)
    )
    padded = assigner.assign(anchors, per_level, torch.zeros(2, 4, 4), torch.full((2, 4), -1))
    for result in (empty, padded):
        assert torch.equal(result.matched, torch.zeros(2, len(anchors), dtype=torch.long))
        assert torch.equal(result.max_iou, torch.zeros(2, len(anchors)))


def test_atss_padded_gt_changes_nothing():
    anchors, per_level = level_anchors()
    g = torch.Generator().manual_seed(3)
    boxes, labels, _ = random_gt(g, num_images=1, max_gt=3)
    alone = ATSSAssigner().assign(anchors, per_level, boxes, labels)
    padded_boxes = torch.cat([boxes, torch.tensor([[[0.0, 0.0, 128.0, 128.0]] * 2])], dim=1)
    padded_labels = torch.cat([labels, torch.full((1, 2), -1)], dim=1)
    padded = ATSSAssigner().assign(anchors, per_level, padded_boxes, padded_labels)
    assert torch.equal(alone.matched, padded.matched)
    torch.testing.assert_close(alone.max_iou, padded.max_iou)


def test_atss_anchor_claimed_by_two_gts_takes_higher_iou():
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0], [20.0, 0.0, 30.0, 10.0]]
    )
    gt = torch.tensor([[[0.0, 0.0, 12.0, 10.0], [2.0, 0.0, 16.0, 10.0]]])
    result = ATSSAssigner(topk=3).assign(anchors, [3], gt, torch.tensor([[0, 1]]))
    ious = tv_box_iou(gt[0], anchors)
    # anchor 0 is positive for both GTs (IoU 0.83 vs 0.5): the first GT wins
    assert ious[0, 0] > ious[1, 0]
    assert result.matched[0, 0] == 1
    torch.testing.assert_close(result.max_iou[0, 0], ious[0, 0])


def test_atss_builds_from_registry():
    assert build("assigner", {"type": "atss", "topk": 5}).topk == 5


def test_atss_equal_iou_tie_goes_to_the_first_gt():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 0.0, 40.0, 10.0]])
    # mirror images around anchor 0's centre: the same IoU (10/12) and distance
    gt = torch.tensor([[[0.0, 0.0, 12.0, 10.0], [-2.0, 0.0, 10.0, 10.0]]])
    result = ATSSAssigner(topk=1).assign(anchors, [2], gt, torch.tensor([[0, 1]]))
    assert result.matched.tolist() == [[1, 0]]


def test_atss_gt_outside_all_anchors_gets_nothing():
    anchors, per_level = level_anchors()
    gt = torch.tensor([[[300.0, 300.0, 340.0, 350.0], [10.0, 10.0, 50.0, 50.0]]])
    result = ATSSAssigner().assign(anchors, per_level, gt, torch.tensor([[0, 1]]))
    assert not (result.matched == 1).any() and (result.matched == 2).any()


def test_atss_gt_covering_everything_keeps_its_adaptive_topk():
    anchors, per_level = level_anchors()
    # the whole 128 px image, centre off the anchor grid's symmetry (no distance ties)
    gt = torch.tensor([[[0.0, 0.0, 126.6, 123.4]]])
    result = ATSSAssigner(topk=9).assign(anchors, per_level, gt, torch.tensor([[0]]))
    positive = result.matched[0] > 0
    assert 0 < positive.sum() <= 27  # at most topk per level, never every anchor
    assert torch.equal(positive, reference_atss(anchors, per_level, gt[0], 9) > 0)
