"""FSAF: effective/ignoring regions and online feature selection against per-GT loops."""

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, sigmoid_focal_loss

from tunedet.config.loader import load_config
from tunedet.models import build_detector
from tunedet.models.detectors.fsaf import region_masks


def fsaf():
    torch.manual_seed(0)
    return build_detector(load_config("fsaf/demo").model.model_dump())


def level_points(sizes=((8, 8), (4, 4), (2, 2)), strides=(8, 16, 32)):
    points, point_strides, per_level = [], [], []
    for (h, w), s in zip(sizes, strides, strict=True):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        points.append(torch.stack([xs.flatten(), ys.flatten()], dim=1).float() * s + s / 2)
        point_strides.append(torch.full((h * w,), float(s)))
        per_level.append(h * w)
    return torch.cat(points), torch.cat(point_strides), per_level


def test_region_masks_are_the_shrunk_box_or_the_centre_cell():
    points, strides, _ = level_points()
    boxes = torch.tensor([[[8.0, 8, 56, 40], [30, 30, 33, 34]]])
    mask = region_masks(points, boxes, 0.5, strides)
    for m, (x1, y1, x2, y2) in enumerate(boxes[0].tolist()):
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        for a, ((px, py), s) in enumerate(zip(points.tolist(), strides.tolist(), strict=True)):
            inside = abs(px - cx) <= w * 0.25 and abs(py - cy) <= h * 0.25
            cell = px - s / 2 <= cx < px + s / 2 and py - s / 2 <= cy < py + s / 2
            assert mask[0, m, a].item() == (inside or cell), (m, a)


def test_online_feature_selection_equals_per_gt_loops():
    model = fsaf()
    points, strides, per_level = level_points()
    torch.manual_seed(1)
    num_points = len(points)
    logits = torch.randn(2, num_points, 3)
    distances = torch.rand(2, num_points, 4) * 30
    boxes = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
    gt_boxes = torch.tensor(
        [
            [[4.0, 6, 40, 44], [20, 10, 60, 30], [2, 2, 12, 10]],
            [[10, 10, 62, 60], [0, 0, 0, 0], [0, 0, 0, 0]],
        ]
    )
    gt_labels = torch.tensor([[0, 2, 1], [1, -1, -1]])
    matched, level, costs = model.select_levels(
        logits, boxes, points, strides, per_level, gt_boxes, gt_labels
    )
    level_of = torch.arange(3).repeat_interleave(torch.tensor(per_level))
    for b in range(2):
        expected_matched = torch.zeros(num_points, dtype=torch.long)
        ignored = torch.zeros(num_points, dtype=torch.bool)
        best_area = torch.full((num_points,), float("inf"))
        for m in range(3):
            if gt_labels[b, m] < 0:
                continue
            effective = region_masks(points, gt_boxes[b : b + 1, m : m + 1], 0.2, strides)[0, 0]
            ignoring = region_masks(points, gt_boxes[b : b + 1, m : m + 1], 0.5, strides)[0, 0]
            target = F.one_hot(gt_labels[b, m], 3).float().expand(num_points, -1)
            focal = sigmoid_focal_loss(logits[b], target, 0.25, 2.0, reduction="none").sum(-1)
            iou = box_iou(boxes[b], gt_boxes[b, m : m + 1])[:, 0]
            want = []
            for lv in range(3):
                region = effective & (level_of == lv)
                want.append((focal[region].mean() + (1 - iou[region]).mean()).item())
            torch.testing.assert_close(costs[b, m], torch.tensor(want), rtol=1e-4, atol=1e-5)
            chosen = int(torch.tensor(want).argmin())
            assert level[b, m] == chosen
            area = (gt_boxes[b, m, 2] - gt_boxes[b, m, 0]) * (gt_boxes[b, m, 3] - gt_boxes[b, m, 1])
            positive = effective & (level_of == chosen) & (area < best_area)
            expected_matched[positive] = m + 1
            best_area[positive] = area
            ignored |= ignoring & ((level_of - chosen).abs() <= 1)
        expected_matched[(expected_matched == 0) & ignored] = -1
        assert torch.equal(matched[b], expected_matched)
    assert (matched > 0).any() and (matched < 0).any()


def test_fsaf_trains_and_predicts_boxes_from_stride_normalised_distances():
    model = fsaf().train()
    images = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[[4.0, 6, 30, 40], [30, 20, 60, 50]], [[10, 10, 40, 30], [0, 0, 0, 0]]])
    labels = torch.tensor([[0, 2], [1, -1]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(8):
        losses = model.loss(images, boxes, labels)
        total = sum(losses.values())
        history.append(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert history[-1] < history[0]
    # regression 0.25 (the init bias) at every point of stride s: a square of side 2·0.25·4·s
    model.eval()
    with torch.no_grad():
        for conv in (model.head.box_deltas,):
            conv.weight.zero_()
            conv.bias.fill_(0.25)
        _, decoded, points, strides, _ = model.dense_outputs(images)
    torch.testing.assert_close(decoded[0, :, 2] - decoded[0, :, 0], 2 * 0.25 * 4 * strides)
    torch.testing.assert_close((decoded[0, :, :2] + decoded[0, :, 2:]) / 2, points)
