import math

import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.assigners import GridAssigner
from tunedet.assigners.anchor_grid import level_grids
from tunedet.config.registry import build

STRIDES = (8, 16, 32)
SIZES = ((16, 16), (8, 8), (4, 4))  # a 128 px image


def grid_anchors(scales=3, ratios=(0.5, 1.0, 2.0)):
    gen = GridAnchorGenerator(
        strides=STRIDES, octave_base_scale=4.0, scales_per_octave=scales, ratios=ratios
    )
    levels = gen.grid_anchors(list(SIZES))
    return torch.cat(levels), [len(a) for a in levels], gen.num_anchors_per_location


def random_gt(g, num_images, max_gt, image_size=128):
    counts = torch.randint(0, max_gt + 1, (num_images,), generator=g)
    counts[0] = max_gt
    xy = torch.rand(num_images, max_gt, 2, generator=g) * image_size * 0.8
    wh = torch.rand(num_images, max_gt, 2, generator=g) * 80 + 8
    boxes = torch.cat([xy, xy + wh], dim=-1)
    labels = torch.randint(0, 3, (num_images, max_gt), generator=g)
    padding = torch.arange(max_gt)[None] >= counts[:, None]
    labels[padding] = -1
    boxes[padding] = 0.0
    return boxes, labels, counts


def responsible(box, per_cell, num_anchors):
    """Anchors of the cell holding the box centre on every level (paper's rule)."""
    mask = torch.zeros(num_anchors, dtype=torch.bool)
    cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
    start = 0
    for stride, (height, width) in zip(STRIDES, SIZES, strict=True):
        col, row = math.floor(cx / stride), math.floor(cy / stride)
        if 0 <= col < width and 0 <= row < height:
            first = start + (row * width + col) * per_cell
            mask[first : first + per_cell] = True
        start += height * width * per_cell
    return mask


def reference_grid_max_iou(anchors, boxes, per_cell, pos_thr, neg_thr, min_pos):
    matched = torch.full((len(anchors),), -1, dtype=torch.long)
    if len(boxes) == 0:
        return matched.zero_()
    ious = tv_box_iou(boxes, anchors)
    matched[ious.max(0).values < neg_thr] = 0
    cells = torch.stack([responsible(b, per_cell, len(anchors)) for b in boxes])
    for a in range(len(anchors)):
        best, who = -1.0, None
        for j in range(len(boxes)):
            if cells[j, a] and ious[j, a] >= pos_thr and ious[j, a] > best:
                best, who = float(ious[j, a]), j
        if who is not None:
            matched[a] = who + 1
    for j in range(len(boxes)):
        if cells[j].any():
            best = ious[j][cells[j]].max()
            if best >= min_pos and best > 0:
                matched[cells[j] & (ious[j] == best)] = j + 1
    return matched


def reference_yolov3(anchors, boxes, per_cell, ignore_thr):
    if len(boxes) == 0:
        return torch.zeros(len(anchors), dtype=torch.long)
    ious = tv_box_iou(boxes, anchors)
    matched = torch.where(ious.max(0).values >= ignore_thr, -1, 0)
    sizes = anchors[:, 2:] - anchors[:, :2]
    for j, box in enumerate(boxes):
        cells = responsible(box, per_cell, len(anchors))
        if not cells.any():
            continue
        w, h = box[2:] - box[:2]
        best, chosen = -1.0, None
        for a in cells.nonzero()[:, 0].tolist():
            inter = min(w, sizes[a, 0]) * min(h, sizes[a, 1])
            shape_iou = float(inter / (w * h + sizes[a, 0] * sizes[a, 1] - inter))
            if shape_iou > best:
                best, chosen = shape_iou, a
        matched[chosen] = j + 1
    return matched


def test_grid_max_iou_equals_per_gt_reference():
    anchors, per_level, per_cell = grid_anchors()
    g = torch.Generator().manual_seed(0)
    assigner = GridAssigner("max_iou", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.1)
    for _ in range(3):
        boxes, labels, counts = random_gt(g, num_images=3, max_gt=5)
        result = assigner.assign(anchors, per_level, boxes, labels)
        for i in range(3):
            expected = reference_grid_max_iou(
                anchors, boxes[i, : counts[i]], per_cell, 0.5, 0.4, 0.1
            )
            assert torch.equal(result.matched[i], expected)
        assert (result.matched > 0).any() and (result.matched == -1).any()


def positional_choice_differs(anchors, box, per_cell):
    """True when the responsible anchor by positional IoU (anchor where it lies) is not the
    one by centred IoU (shapes only, the paper's rule) for ``box``."""
    cells = responsible(box, per_cell, len(anchors)).nonzero()[:, 0]
    if len(cells) == 0:
        return False
    sizes = anchors[cells, 2:] - anchors[cells, :2]
    w, h = box[2:] - box[:2]
    inter = torch.minimum(w, sizes[:, 0]) * torch.minimum(h, sizes[:, 1])
    centred = inter / (w * h + sizes[:, 0] * sizes[:, 1] - inter)
    positional = tv_box_iou(box[None], anchors[cells])[0]
    return bool(centred.argmax() != positional.argmax())


def test_grid_yolov3_gives_each_gt_exactly_one_anchor_by_shape():
    anchors, per_level, per_cell = grid_anchors()
    telling = 0
    for seed in (0, 2, 3):
        g = torch.Generator().manual_seed(seed)
        boxes, labels, counts = random_gt(g, num_images=4, max_gt=4)
        result = GridAssigner("yolov3", neg_iou_thr=0.5).assign(anchors, per_level, boxes, labels)
        for i in range(4):
            expected = reference_yolov3(anchors, boxes[i, : counts[i]], per_cell, 0.5)
            assert torch.equal(result.matched[i], expected)
            codes = result.matched[i][result.matched[i] > 0]
            assert len(codes) == len(set(codes.tolist()))  # one anchor per GT
            telling += sum(
                positional_choice_differs(anchors, b, per_cell) for b in boxes[i, : counts[i]]
            )
        assert (result.matched == -1).any()  # the ignore threshold is exercised
    # some GTs pick another anchor by positional IoU: the sample tells the two rules apart
    assert telling >= 3


def test_grid_centre_on_a_cell_border_belongs_to_the_cell_right_below():
    anchors, per_level, per_cell = grid_anchors(scales=1, ratios=(1.0,))
    # centre (16, 24): a border of the stride-8 cells in x and y → cell (row 3, col 2)
    gt = torch.tensor([[[12.0, 20.0, 20.0, 28.0]]])
    result = GridAssigner("yolov3").assign(anchors, per_level, gt, torch.tensor([[0]]))
    (index,) = (result.matched[0] > 0).nonzero()[0].tolist()
    assert index == 3 * 16 + 2
    centre = (anchors[index, :2] + anchors[index, 2:]) / 2
    assert centre.tolist() == [20.0, 28.0]


def test_grid_only_responsible_anchors_are_positive_for_a_gt_covering_everything():
    anchors, per_level, per_cell = grid_anchors()
    cover = torch.tensor([[[0.0, 0.0, 128.0, 128.0]]])
    result = GridAssigner("max_iou").assign(anchors, per_level, cover, torch.tensor([[0]]))
    cells = responsible(cover[0, 0], per_cell, len(anchors))
    positive = result.matched[0] > 0
    assert positive.any() and not (positive & ~cells).any()
    ious = tv_box_iou(cover[0], anchors)[0]
    assert (ious[~cells] >= 0.5).any()  # such anchors outside the cell are ignored instead
    assert (result.matched[0][~cells & (ious >= 0.5)] == -1).all()


@pytest.mark.parametrize("mode", ["max_iou", "yolov3"])
def test_grid_empty_and_outside_gt_get_no_anchor(mode):
    anchors, per_level, _ = grid_anchors()
    assigner = GridAssigner(mode)
    empty = assigner.assign(anchors, per_level, torch.zeros(2, 0, 4), torch.zeros(2, 0).long())
    assert not empty.matched.any()
    padded = assigner.assign(anchors, per_level, torch.zeros(2, 2, 4), torch.full((2, 2), -1))
    assert not padded.matched.any()
    outside = torch.tensor([[[140.0, 140.0, 180.0, 170.0]]])  # centre beyond the 128 px grid
    result = assigner.assign(anchors, per_level, outside, torch.tensor([[0]]))
    assert not (result.matched > 0).any()


def test_grid_reads_strides_and_rejects_anchors_off_a_grid():
    anchors, per_level, _ = grid_anchors()
    grids = level_grids(anchors, per_level)
    assert [g.stride for g in grids] == list(STRIDES)
    assert [(g.height, g.width, g.per_cell) for g in grids] == [(h, w, 9) for h, w in SIZES]
    shuffled = anchors[torch.randperm(len(anchors), generator=torch.Generator().manual_seed(0))]
    with pytest.raises(ValueError, match="grid"):
        GridAssigner().assign(shuffled, per_level, torch.ones(1, 1, 4), torch.tensor([[0]]))


def test_grid_builds_from_registry_and_rejects_bad_thresholds():
    assert build("assigner", {"type": "grid", "mode": "yolov3"}).mode == "yolov3"
    with pytest.raises(ValueError, match="neg_iou_thr"):
        GridAssigner(pos_iou_thr=0.3, neg_iou_thr=0.5)
