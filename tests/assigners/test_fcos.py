import math

import pytest
import torch

from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.assigners import FCOSAssigner
from tunedet.config.registry import build

STRIDES = (8, 16, 32)
RANGES = (0.0, 32.0, 64.0, math.inf)


def point_anchors(per_cell=1):
    ratios = (1.0,) if per_cell == 1 else (0.5, 1.0, 2.0)
    gen = GridAnchorGenerator(
        strides=STRIDES, octave_base_scale=4.0, scales_per_octave=1, ratios=ratios
    )
    levels = gen.grid_anchors([(16, 16), (8, 8), (4, 4)])
    return torch.cat(levels), [len(a) for a in levels]


def random_gt(g, num_images, max_gt, image_size=128):
    counts = torch.randint(0, max_gt + 1, (num_images,), generator=g)
    counts[0] = max_gt
    xy = torch.rand(num_images, max_gt, 2, generator=g) * image_size * 0.7
    wh = torch.rand(num_images, max_gt, 2, generator=g) * 100 + 4
    boxes = torch.cat([xy, xy + wh], dim=-1)
    labels = torch.randint(0, 3, (num_images, max_gt), generator=g)
    padding = torch.arange(max_gt)[None] >= counts[:, None]
    labels[padding] = -1
    boxes[padding] = 0.0
    return boxes, labels, counts


def reference_fcos(anchors, per_level, boxes, ranges, center_sampling, radius):
    """FCOS's steps, one GT at a time: inside (or centre region) → scale range → min area."""
    points = (anchors[:, :2] + anchors[:, 2:]) / 2
    level_stride = torch.cat(
        [torch.full((n,), float(s)) for n, s in zip(per_level, STRIDES, strict=True)]
    )
    level_index = torch.cat([torch.full((n,), i) for i, n in enumerate(per_level)])
    matched = torch.zeros(len(anchors), dtype=torch.long)
    best_area = torch.full((len(anchors),), math.inf)
    for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        px, py = points[:, 0], points[:, 1]
        ltrb = torch.stack([px - x1, py - y1, x2 - px, y2 - py], dim=1)
        if center_sampling:
            cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, radius * level_stride
            region = torch.stack(
                [
                    px - torch.clamp(cx - r, min=x1),
                    py - torch.clamp(cy - r, min=y1),
                    torch.clamp(cx + r, max=x2) - px,
                    torch.clamp(cy + r, max=y2) - py,
                ],
                dim=1,
            )
            inside = region.min(dim=1).values > 0
        else:
            inside = ltrb.min(dim=1).values > 0
        reach = ltrb.max(dim=1).values
        low = torch.tensor(ranges)[level_index]
        high = torch.tensor(ranges)[level_index + 1]
        candidate = inside & (reach >= low) & (reach <= high)
        area = (x2 - x1) * (y2 - y1)
        better = candidate & (area < best_area)
        matched[better] = j + 1
        best_area[better] = area
    return matched


@pytest.mark.parametrize("center_sampling", [True, False])
def test_fcos_equals_per_gt_reference_loop(center_sampling):
    anchors, per_level = point_anchors()
    assigner = FCOSAssigner(RANGES, center_sampling=center_sampling, center_radius=1.5)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        boxes, labels, counts = random_gt(g, num_images=3, max_gt=6)
        result = assigner.assign(anchors, per_level, boxes, labels)
        for i in range(3):
            expected = reference_fcos(
                anchors, per_level, boxes[i, : counts[i]], RANGES, center_sampling, 1.5
            )
            assert torch.equal(result.matched[i], expected)
        assert (result.matched > 0).any()
        assert not (result.matched < 0).any()  # FCOS ignores nothing


def test_fcos_ambiguous_point_takes_the_smallest_gt_then_the_first():
    anchors, per_level = point_anchors()
    big, small = [8.0, 8.0, 56.0, 56.0], [20.0, 20.0, 44.0, 44.0]  # share the centre (32, 32)
    same_area = [18.0, 20.0, 42.0, 44.0]
    gt = torch.tensor([[big, small, same_area]])
    result = FCOSAssigner(RANGES, center_sampling=False).assign(
        anchors, per_level, gt, torch.tensor([[0, 1, 2]])
    )
    points = (anchors[:, :2] + anchors[:, 2:]) / 2
    at = ((points - torch.tensor([28.0, 28.0])).abs().sum(1) == 0).nonzero()[0, 0]
    # (28, 28) on P3 lies inside all three: small and same_area tie on area → small (first)
    assert result.matched[0, at] == 2


def test_fcos_scale_range_picks_the_level_and_bounds_are_inclusive():
    anchors, per_level = point_anchors()
    # a 60 px square: max(l, t, r, b) ≤ 60 near the centre → P4 (32–64); never P3 or P5
    cover = torch.tensor([[[34.0, 34.0, 94.0, 94.0]]])
    result = FCOSAssigner(RANGES, center_sampling=False).assign(
        anchors, per_level, cover, torch.tensor([[0]])
    )
    levels = (result.matched[0] > 0).split(per_level)
    assert not levels[0].any() and levels[1].any() and not levels[2].any()
    # max(l, t, r, b) exactly 32, a range boundary: positive on both sides of it
    points = (anchors[:, :2] + anchors[:, 2:]) / 2
    assigner = FCOSAssigner(RANGES, center_sampling=False)
    for box, point, level in (
        ([0.0, 0.0, 36.0, 36.0], [4.0, 4.0], 0),
        ([0.0, 0, 40, 40], [8.0, 8], 1),
    ):
        result = assigner.assign(anchors, per_level, torch.tensor([[box]]), torch.tensor([[0]]))
        at = ((points - torch.tensor(point)).abs().sum(1) == 0).nonzero()[:, 0]
        at = at[(at >= sum(per_level[:level])) & (at < sum(per_level[: level + 1]))]
        assert result.matched[0, at].tolist() == [1]


def test_fcos_empty_outside_and_covering_gt():
    anchors, per_level = point_anchors(per_cell=3)
    assigner = FCOSAssigner(RANGES)
    empty = assigner.assign(anchors, per_level, torch.zeros(1, 0, 4), torch.zeros(1, 0).long())
    assert not empty.matched.any()
    outside = torch.tensor([[[200.0, 200.0, 260.0, 240.0]]])
    assert not assigner.assign(anchors, per_level, outside, torch.tensor([[0]])).matched.any()
    cover = torch.tensor([[[0.0, 0.0, 128.0, 128.0]]])
    result = FCOSAssigner(RANGES, center_sampling=False).assign(
        anchors, per_level, cover, torch.tensor([[0]])
    )
    levels = (result.matched[0] > 0).split(per_level)
    # max distance ≥ 64 everywhere inside: only P5 (64–∞), where every point is inside
    assert not levels[0].any() and not levels[1].any() and levels[2].all()


def test_fcos_rejects_scale_ranges_that_do_not_match_the_levels():
    anchors, per_level = point_anchors()
    with pytest.raises(ValueError, match="5 levels"):
        FCOSAssigner().assign(anchors, per_level, torch.ones(1, 1, 4), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="non-decreasing"):
        FCOSAssigner((0.0, 64.0, 32.0))
    assert build("assigner", {"type": "fcos", "scale_ranges": [0, 64, 1e8]}).num_levels == 2
