import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import generalized_box_iou as tv_giou

from tunedet.assigners import HungarianAssigner
from tunedet.config.registry import build


def anchors_on_grid(size=64, stride=16, box=24.0):
    centres = (torch.arange(size // stride, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    c = torch.stack([cx.flatten(), cy.flatten()], dim=1)
    return torch.cat([c - box / 2, c + box / 2], dim=1)  # (16, 4)


def random_case(g, num_images, max_gt, num_anchors, num_classes=3):
    counts = torch.randint(1, max_gt + 1, (num_images,), generator=g)
    counts[0] = max_gt
    xy = torch.rand(num_images, max_gt, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + torch.rand(num_images, max_gt, 2, generator=g) * 20 + 4], -1)
    labels = torch.randint(0, num_classes, (num_images, max_gt), generator=g)
    padding = torch.arange(max_gt)[None] >= counts[:, None]
    labels[padding], boxes[padding] = -1, 0.0
    scores = torch.rand(num_images, num_anchors, num_classes, generator=g)
    pxy = torch.rand(num_images, num_anchors, 2, generator=g) * 48
    pred = torch.cat([pxy, pxy + torch.rand(num_images, num_anchors, 2, generator=g) * 20 + 1], -1)
    return boxes, labels, counts, scores, pred


def reference_cost(
    boxes, labels, scores, pred, extent, weights, alpha=0.25, gamma=2.0, cls_cost="focal"
):
    """DETR/OneNet cost in float64, one GT row at a time (``prob``: DETR's ``-p``)."""
    rows = []
    for box, label in zip(boxes.double(), labels, strict=True):
        p = scores[:, label].double()
        focal = alpha * (1 - p) ** gamma * -torch.log(p + 1e-8) - (
            1 - alpha
        ) * p**gamma * -torch.log(1 - p + 1e-8)
        if cls_cost == "prob":
            focal = -p
        l1 = ((pred.double() - box) / extent).abs().sum(dim=1)
        giou = tv_giou(box[None], pred.double())[0]
        rows.append(weights[0] * focal + weights[1] * l1 - weights[2] * giou)
    return torch.stack(rows)


def test_hungarian_equals_scipy_on_the_same_cost():
    anchors = anchors_on_grid()
    g = torch.Generator().manual_seed(0)
    assigner = HungarianAssigner(cls_weight=2.0, l1_weight=5.0, giou_weight=2.0)
    boxes, labels, counts, scores, pred = random_case(g, 3, 5, len(anchors))
    result = assigner.assign(
        anchors, [len(anchors)], boxes, labels, pred_scores=scores, pred_boxes=pred
    )
    extent = torch.tensor([64.0, 64.0, 64.0, 64.0], dtype=torch.float64)  # 8 + 56 per axis
    for i in range(3):
        n = int(counts[i])
        cost = reference_cost(boxes[i, :n], labels[i, :n], scores[i], pred[i], extent, (2, 5, 2))
        ours = assigner.cost(
            anchors, boxes[i : i + 1, :n], labels[i : i + 1, :n], scores[i : i + 1], pred[i : i + 1]
        )
        torch.testing.assert_close(ours[0].double(), cost, rtol=1e-5, atol=1e-5)
        gt_rows, columns = linear_sum_assignment(cost.numpy())
        expected = torch.zeros(len(anchors), dtype=torch.long)
        expected[torch.as_tensor(columns)] = torch.as_tensor(gt_rows) + 1
        assert torch.equal(result.matched[i], expected)
        assert (result.matched[i] > 0).sum() == n  # one prediction per GT


def test_hungarian_probability_cost_and_ties_follow_scipy():
    anchors = anchors_on_grid()
    # identical predictions everywhere: every cost ties; scipy picks, we must agree
    scores = torch.full((1, len(anchors), 2), 0.5)
    pred = torch.tensor([10.0, 10.0, 30.0, 30.0]).expand(1, len(anchors), 4).clone()
    gt = torch.tensor([[[10.0, 10.0, 30.0, 30.0], [12.0, 12.0, 30.0, 30.0]]])
    labels = torch.tensor([[0, 1]])
    assigner = HungarianAssigner(cls_cost="prob")
    result = assigner.assign(anchors, [16], gt, labels, pred_scores=scores, pred_boxes=pred)
    extent = torch.full((4,), 64.0, dtype=torch.float64)  # 8 + 56 per axis
    cost = reference_cost(gt[0], labels[0], scores[0], pred[0], extent, (2, 5, 2), cls_cost="prob")
    torch.testing.assert_close(assigner.cost(anchors, gt, labels, scores, pred)[0].double(), cost)
    rows, columns = linear_sum_assignment(cost.numpy())
    assert result.matched[0, columns].tolist() == (rows + 1).tolist()
    assert (result.matched[0] > 0).sum() == 2


def test_hungarian_empty_outside_covering_and_more_gts_than_predictions():
    anchors = anchors_on_grid()
    g = torch.Generator().manual_seed(1)
    _, _, _, scores, pred = random_case(g, 2, 1, len(anchors))
    assigner = HungarianAssigner()
    kwargs = {"pred_scores": scores, "pred_boxes": pred}
    empty = assigner.assign(anchors, [16], torch.zeros(2, 0, 4), torch.zeros(2, 0).long(), **kwargs)
    assert not empty.matched.any()
    padded = assigner.assign(anchors, [16], torch.zeros(2, 3, 4), torch.full((2, 3), -1), **kwargs)
    assert not padded.matched.any()
    # one-to-one: a GT far outside every anchor, or covering them all, still gets exactly one
    for box in ([500.0, 500.0, 540.0, 560.0], [0.0, 0.0, 64.0, 64.0]):
        gt = torch.tensor([[box], [box]])
        result = assigner.assign(anchors, [16], gt, torch.tensor([[0], [1]]), **kwargs)
        assert ((result.matched > 0).sum(dim=1) == 1).all()
    # 20 GTs, 16 predictions: 16 matched, each prediction once
    many = torch.tensor([[1.0, 1.0, 20.0, 20.0]]).repeat(1, 20, 1)
    result = assigner.assign(
        anchors, [16], many, torch.zeros(1, 20).long(), pred_scores=scores[:1], pred_boxes=pred[:1]
    )
    assert (result.matched[0] > 0).all() and len(set(result.matched[0].tolist())) == 16


def test_hungarian_survives_non_finite_predictions():
    anchors = anchors_on_grid()
    scores = torch.full((1, 16, 2), 0.5)
    pred = torch.full((1, 16, 4), float("nan"))
    pred[0, 3] = torch.tensor([10.0, 10.0, 30.0, 30.0])
    gt = torch.tensor([[[10.0, 10.0, 30.0, 30.0]]])
    result = HungarianAssigner().assign(
        anchors, [16], gt, torch.tensor([[0]]), pred_scores=scores, pred_boxes=pred
    )
    assert result.matched[0].tolist() == [0, 0, 0, 1] + [0] * 12


def test_hungarian_needs_predictions():
    assigner = build("assigner", {"type": "hungarian", "l1_weight": 1.0})
    assert assigner.needs_predictions and assigner.l1_weight == 1.0
    with pytest.raises(ValueError, match="pred_scores"):
        assigner.assign(anchors_on_grid(), [16], torch.ones(1, 1, 4), torch.tensor([[0]]))
