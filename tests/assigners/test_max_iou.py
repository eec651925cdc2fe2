import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou as tv_box_iou

from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.assigners.max_iou import MaxIoUAssigner
from tunedet.config.registry import build


def dense_anchors():
    gen = GridAnchorGenerator(strides=(8, 16, 32), octave_base_scale=4.0)
    levels = gen.grid_anchors([(16, 16), (8, 8), (4, 4)])
    return torch.cat(levels), [len(a) for a in levels]


def random_gt(g, num_images, max_gt, image_size=128):
    counts = torch.randint(0, max_gt + 1, (num_images,), generator=g)
    counts[0] = max_gt  # at least one full image
    xy = torch.rand(num_images, max_gt, 2, generator=g) * image_size * 0.8
    wh = torch.rand(num_images, max_gt, 2, generator=g) * 80 + 12
    boxes = torch.cat([xy, (xy + wh).clamp(max=image_size)], dim=-1)
    labels = torch.randint(0, 5, (num_images, max_gt), generator=g)
    padding = torch.arange(max_gt)[None] >= counts[:, None]
    labels[padding] = -1
    boxes[padding] = 0.0
    return boxes, labels, counts


def matcher_as_assign_result(matcher, anchors, boxes):
    """torchvision's Matcher mapped to our codes: -1 (below) → 0, -2 (between) → -1, k → k + 1.

    One documented difference remains: an anchor that is some GT's best (low-quality
    match) keeps its own best GT in the Matcher, but goes to the (last) GT it is best
    for in MaxIoUAssigner (mmdetection's rule). The reference applies that rule.
    """
    if len(boxes) == 0:
        return torch.zeros(len(anchors), dtype=torch.long)
    ious = tv_box_iou(boxes, anchors)
    m = matcher(ious)
    result = torch.where(m == -1, 0, torch.where(m == -2, -1, m + 1))
    if matcher.allow_low_quality_matches:
        best_for = ious == ious.max(dim=1, keepdim=True).values  # (M, A)
        claimed = best_for.any(dim=0)
        last_claimer = len(boxes) - best_for.flip(0).int().argmax(dim=0)
        result[claimed] = last_claimer[claimed]
    return result


@pytest.mark.parametrize("low_quality", [True, False])
def test_max_iou_equals_torchvision_matcher_per_image(low_quality):
    anchors, per_level = dense_anchors()
    assigner = MaxIoUAssigner(0.5, 0.4, min_pos_iou=0.0, match_low_quality=low_quality)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=low_quality)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        boxes, labels, counts = random_gt(g, num_images=4, max_gt=4)
        result = assigner.assign(anchors, per_level, boxes, labels)
        assert result.matched.shape == result.max_iou.shape == (4, len(anchors))
        for i in range(4):
            expected = matcher_as_assign_result(matcher, anchors, boxes[i, : counts[i]])
            assert torch.equal(result.matched[i], expected)


def test_max_iou_reports_iou_with_matched_gt_or_best_iou():
    anchors, per_level = dense_anchors()
    g = torch.Generator().manual_seed(1)
    boxes, labels, counts = random_gt(g, num_images=3, max_gt=3)
    result = MaxIoUAssigner().assign(anchors, per_level, boxes, labels)
    for i in range(3):
        ious = tv_box_iou(boxes[i, : counts[i]], anchors)  # (M_i, A)
        best = ious.max(0).values if counts[i] else torch.zeros(len(anchors))
        matched = result.matched[i]
        pos = matched > 0
        expected = best.clone()
        expected[pos] = ious[matched[pos] - 1, pos.nonzero()[:, 0]]
        torch.testing.assert_close(result.max_iou[i], expected, atol=1e-5, rtol=0)


def test_max_iou_without_gt_makes_every_anchor_background():
    anchors, per_level = dense_anchors()
    assigner = MaxIoUAssigner()
    empty = assigner.assign(
        anchors, per_level, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long)
    )
    padded = assigner.assign(anchors, per_level, torch.zeros(2, 3, 4), torch.full((2, 3), -1))
    for result in (empty, padded):
        assert torch.equal(result.matched, torch.zeros(2, len(anchors), dtype=torch.long))
        assert torch.equal(result.max_iou, torch.zeros(2, len(anchors)))


def test_max_iou_handles_images_with_different_gt_counts():
    anchors, per_level = dense_anchors()
    g = torch.Generator().manual_seed(2)
    boxes, labels, _ = random_gt(g, num_images=1, max_gt=3)
    assigner = MaxIoUAssigner()
    alone = assigner.assign(anchors, per_level, boxes, labels)
    # the same image padded with two extra GT slots, next to an image with a single GT
    padded_boxes = torch.zeros(2, 5, 4)
    padded_labels = torch.full((2, 5), -1)
    padded_boxes[0, :3], padded_labels[0, :3] = boxes[0], labels[0]
    padded_boxes[1, 0], padded_labels[1, 0] = torch.tensor([10.0, 10.0, 60.0, 40.0]), 2
    batch = assigner.assign(anchors, per_level, padded_boxes, padded_labels)
    assert torch.equal(batch.matched[0], alone.matched[0])
    assert batch.matched[1].max() == 1  # only GT 0 of image 1 is ever matched
    assert (batch.matched[1] > 0).any()


def test_max_iou_padded_gt_never_matches_even_if_it_overlaps():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    labels = torch.tensor([[1, -1]])
    result = MaxIoUAssigner().assign(anchors, [2], boxes, labels)
    assert result.matched.tolist() == [[1, 0]]


def test_max_iou_applies_thresholds_with_ignore_band():
    # anchor IoUs with the GT [0, 0, 10, 10]: 1.0, 0.6, 0.45, 0.3
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 6.0],
            [0.0, 0.0, 10.0, 4.5],
            [0.0, 0.0, 10.0, 3.0],
        ]
    )
    result = MaxIoUAssigner(0.5, 0.4).assign(anchors, [4], gt, torch.tensor([[0]]))
    assert result.matched.tolist() == [[1, 1, -1, 0]]
    torch.testing.assert_close(result.max_iou, torch.tensor([[1.0, 0.6, 0.45, 0.3]]))


def test_max_iou_low_quality_match_gives_each_gt_its_best_anchors_including_ties():
    # GT at IoU 0.25 with two anchors (tie) and 0.1 with a third: no anchor passes 0.5
    gt = torch.tensor([[[0.0, 0.0, 20.0, 20.0]]])
    anchors = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 4.0, 10.0]]
    )
    labels = torch.tensor([[3]])
    all_ties = MaxIoUAssigner(0.5, 0.4).assign(anchors, [3], gt, labels)
    assert all_ties.matched.tolist() == [[1, 1, 0]]
    first_only = MaxIoUAssigner(0.5, 0.4, gt_max_assign_all=False).assign(anchors, [3], gt, labels)
    assert first_only.matched.tolist() == [[1, 0, 0]]
    no_low_quality = MaxIoUAssigner(0.5, 0.4, match_low_quality=False).assign(
        anchors, [3], gt, labels
    )
    assert no_low_quality.matched.tolist() == [[0, 0, 0]]
    strict = MaxIoUAssigner(0.5, 0.4, min_pos_iou=0.3).assign(anchors, [3], gt, labels)
    assert strict.matched.tolist() == [[0, 0, 0]]


def test_max_iou_gt_overlapping_no_anchor_gets_nothing():
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    result = MaxIoUAssigner().assign(anchors, [2], gt, torch.tensor([[0, 1]]))
    # torchvision's Matcher would treat IoU 0 as a tie and match every such anchor
    assert result.matched.tolist() == [[1, 0]]


def test_max_iou_one_gt_covering_everything_takes_all_anchors_it_overlaps_enough():
    gt = torch.tensor([[[0.0, 0.0, 100.0, 100.0]]])
    anchors = torch.tensor(
        [[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 80.0, 80.0], [0.0, 0.0, 50.0, 50.0]]
    )
    result = MaxIoUAssigner().assign(anchors, [3], gt, torch.tensor([[0]]))
    assert result.matched.tolist() == [[1, 1, 0]]  # IoU 1, 0.64, 0.25


def test_max_iou_low_quality_anchor_goes_to_the_gt_it_is_best_for():
    # anchor 0 overlaps GT 0 most (IoU 0.83) but is also GT 1's best anchor (IoU 0.3)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 12.0], [100.0, 100.0, 110.0, 110.0]])
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 40.0]]])
    result = MaxIoUAssigner(0.5, 0.4).assign(anchors, [2], gt, torch.tensor([[0, 1]]))
    assert result.matched.tolist() == [[2, 0]]
    torch.testing.assert_close(result.max_iou, torch.tensor([[0.3, 0.0]]))
    # torchvision's Matcher keeps the anchor's own best GT instead
    tv = Matcher(0.5, 0.4, allow_low_quality_matches=True)(tv_box_iou(gt[0], anchors))
    assert tv.tolist() == [0, -1]


def test_max_iou_last_gt_wins_a_shared_best_anchor():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    gt = torch.tensor([[[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 10.0, 30.0]]])
    # both GTs' best anchor is anchor 0 (IoU 0.25 and 0.333)
    result = MaxIoUAssigner().assign(anchors, [2], gt, torch.tensor([[0, 1]]))
    assert result.matched.tolist() == [[2, 0]]


def test_max_iou_builds_from_registry_and_rejects_bad_thresholds():
    assigner = build("assigner", {"type": "max_iou", "pos_iou_thr": 0.7, "neg_iou_thr": 0.3})
    assert (assigner.pos_iou_thr, assigner.neg_iou_thr) == (0.7, 0.3)
    with pytest.raises(ValueError, match="neg_iou_thr"):
        MaxIoUAssigner(pos_iou_thr=0.3, neg_iou_thr=0.5)


def test_max_iou_is_the_same_computed_in_many_small_chunks(monkeypatch):
    import tunedet.assigners.overlaps as overlaps

    anchors, per_level = dense_anchors()
    g = torch.Generator().manual_seed(4)
    boxes, labels, _ = random_gt(g, num_images=3, max_gt=5)
    boxes[1, :2] = torch.tensor(
        [20.0, 20.0, 70.0, 60.0]
    )  # a duplicate GT: the same best anchors, the last one wins
    labels[1, :2] = 1
    whole = MaxIoUAssigner().assign(anchors, per_level, boxes, labels)
    monkeypatch.setattr(overlaps, "CPU_CHUNK_ELEMENTS", 1)  # 64 anchors per chunk
    assert overlaps.chunk_size(3, 5, len(anchors), anchors.device) == 64
    for all_ties in (True, False):
        chunked = MaxIoUAssigner(gt_max_assign_all=all_ties).assign(
            anchors, per_level, boxes, labels
        )
        reference = MaxIoUAssigner(gt_max_assign_all=all_ties)
        monkeypatch.setattr(overlaps, "CPU_CHUNK_ELEMENTS", 1 << 30)
        expected = reference.assign(anchors, per_level, boxes, labels)
        monkeypatch.setattr(overlaps, "CPU_CHUNK_ELEMENTS", 1)
        assert torch.equal(chunked.matched, expected.matched)
        torch.testing.assert_close(chunked.max_iou, expected.max_iou)
    # duplicate GTs: threshold positives go to the first, best-anchor claims to the last
    assert (whole.matched[1] == 1).any() and (whole.matched[1] == 2).any()


def test_max_iou_presets_follow_the_papers():
    from tunedet.assigners import MAX_IOU_PRESETS

    # GT [0, 0, 10, 10]; anchors at IoU 1.0 (twice: a tie), 0.6, 0.45, 0.35, 0.25
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 6.0],
            [0.0, 0.0, 10.0, 4.5],
            [0.0, 0.0, 10.0, 3.5],
            [0.0, 0.0, 10.0, 2.5],
        ]
    )
    labels = torch.tensor([[0]])
    codes = {
        name: build("assigner", spec).assign(anchors, [6], gt, labels).matched.tolist()[0]
        for name, spec in MAX_IOU_PRESETS.items()
    }
    assert codes["retinanet"] == [1, 1, 1, -1, 0, 0]  # ignore band 0.4–0.5
    assert codes["rpn"] == [1, 1, -1, -1, -1, 0]  # 0.3 ≤ IoU < 0.7 ignored
    assert codes["ssd"] == [1, 1, 1, 0, 0, 0]  # no ignore band

    # a GT overlapping its best prior at IoU 0.3 only: SSD still gives it that one prior,
    # the first of two tying priors; RPN's min_pos_iou 0.3 keeps it (0.3 ≥ 0.3)
    small_gt = torch.tensor([[[0.0, 0.0, 10.0, 3.0]]])
    tie = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50, 60, 60]])
    ssd = build("assigner", MAX_IOU_PRESETS["ssd"]).assign(tie, [3], small_gt, labels)
    assert ssd.matched.tolist() == [[1, 0, 0]]
    retina = build("assigner", MAX_IOU_PRESETS["retinanet"]).assign(tie, [3], small_gt, labels)
    assert retina.matched.tolist() == [[1, 1, 0]]  # gt_max_assign_all: both tying anchors
    tinier = torch.tensor([[[0.0, 0.0, 10.0, 2.5]]])
    rpn = build("assigner", MAX_IOU_PRESETS["rpn"]).assign(tie, [3], tinier, labels)
    assert rpn.matched.tolist() == [[0, 0, 0]]  # best IoU 0.25 < min_pos_iou 0.3


def test_max_iou_tie_between_two_gts_goes_to_the_first():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 50.0, 50.0]])
    # both GTs overlap anchor 0 at IoU 10/12 and are not each other's best anchor ties
    gt = torch.tensor([[[0.0, 0.0, 12.0, 10.0], [0.0, 0.0, 10.0, 12.0], [40, 40, 50, 50]]])
    result = MaxIoUAssigner(match_low_quality=False).assign(
        anchors, [2], gt, torch.tensor([[0, 1, 2]])
    )
    assert result.matched.tolist() == [[1, 3]]


def test_iou_exactly_at_a_threshold_is_positive_at_pos_and_ignored_at_neg():
    # anchor 10x10 at the origin; GTs 10x5 and 10x4 on it: IoU exactly 0.5 and 0.4
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assigner = MaxIoUAssigner(0.5, 0.4, match_low_quality=False)
    at_pos = assigner.assign(
        anchors, [1], torch.tensor([[[0.0, 0.0, 10.0, 5.0]]]), torch.tensor([[0]])
    )
    at_neg = assigner.assign(
        anchors, [1], torch.tensor([[[0.0, 0.0, 10.0, 4.0]]]), torch.tensor([[0]])
    )
    assert at_pos.max_iou[0, 0] == 0.5 and at_neg.max_iou[0, 0] == pytest.approx(0.4)
    assert at_pos.matched[0, 0] == 1  # IoU >= pos_iou_thr: positive
    assert at_neg.matched[0, 0] == -1  # not below neg_iou_thr: ignored, not background
