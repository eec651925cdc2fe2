import math

import pytest
import torch
import torchvision.ops as tvops

from tunedet.boxes import (
    aligned_box_iou,
    box_iou,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
)

PAIRWISE = {
    "iou": (box_iou, tvops.box_iou),
    "giou": (generalized_box_iou, tvops.generalized_box_iou),
    "diou": (distance_box_iou, tvops.distance_box_iou),
    "ciou": (complete_box_iou, tvops.complete_box_iou),
}
KINDS = tuple(PAIRWISE)


def random_boxes(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(*shape, 2, generator=g, dtype=dtype) * 100
    wh = torch.rand(*shape, 2, generator=g, dtype=dtype) * 50 + 1
    return torch.cat((xy, xy + wh), dim=-1)


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_equals_torchvision_on_random_boxes(kind):
    ours, theirs = PAIRWISE[kind]
    a, b = random_boxes(30, seed=1), random_boxes(40, seed=2)
    result = ours(a, b)
    assert result.shape == (30, 40)
    torch.testing.assert_close(result, theirs(a, b), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_pairwise_equals_per_image_calls(kind):
    ours, _ = PAIRWISE[kind]
    a, b = random_boxes(3, 12, seed=3), random_boxes(3, 7, seed=4)
    batched = ours(a, b)
    assert batched.shape == (3, 12, 7)
    for i in range(3):
        torch.testing.assert_close(batched[i], ours(a[i], b[i]), atol=1e-6, rtol=0)


def test_pairwise_broadcasts_shared_boxes_over_the_batch():
    anchors, gt = random_boxes(9, seed=5), random_boxes(2, 4, seed=6)
    batched = box_iou(anchors, gt)
    assert batched.shape == (2, 9, 4)
    torch.testing.assert_close(batched[1], box_iou(anchors, gt[1]))


@pytest.mark.parametrize("kind", KINDS)
def test_aligned_equals_diagonal_of_pairwise(kind):
    ours, _ = PAIRWISE[kind]
    a, b = random_boxes(2, 25, seed=7), random_boxes(2, 25, seed=8)
    aligned = aligned_box_iou(a, b, kind)
    assert aligned.shape == (2, 25)
    torch.testing.assert_close(aligned, ours(a, b).diagonal(dim1=-2, dim2=-1), atol=1e-6, rtol=0)


def _f64(*rows):
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_boxes_have_iou_one(kind):
    boxes = _f64([0, 0, 4, 2], [10, 10, 11, 30])
    torch.testing.assert_close(
        aligned_box_iou(boxes, boxes, kind), torch.ones(2, dtype=torch.float64)
    )


def test_disjoint_boxes_closed_form():
    a, b = _f64([0, 0, 1, 1]), _f64([2, 0, 3, 1])
    # union 2, enclosing box 3x1; centres 2 apart, enclosing diagonal² = 10; same aspect (v = 0)
    expected = {"iou": 0.0, "giou": -1 / 3, "diou": -0.4, "ciou": -0.4}
    for kind, value in expected.items():
        assert aligned_box_iou(a, b, kind, eps=0.0).item() == pytest.approx(value, abs=1e-12)
        assert aligned_box_iou(a, b, kind).item() == pytest.approx(value, abs=1e-6)


def test_nested_boxes_closed_form():
    a, b = _f64([0, 0, 4, 4]), _f64([1, 1, 3, 3])
    # inner/outer = 4/16; enclosing box is the outer box; same centre and aspect
    for kind in KINDS:
        assert aligned_box_iou(a, b, kind, eps=0.0).item() == pytest.approx(0.25, abs=1e-12)


def test_ciou_aspect_term_closed_form():
    a, b = _f64([0, 0, 4, 2]), _f64([0, 0, 2, 4])
    iou = 4 / 12
    diou = iou - (1**2 + 1**2) / (4**2 + 4**2)
    v = 4 / math.pi**2 * (math.atan(2 / 4) - math.atan(4 / 2)) ** 2
    ciou = diou - v / (1 - iou + v) * v
    assert aligned_box_iou(a, b, "diou", eps=0.0).item() == pytest.approx(diou, abs=1e-12)
    assert aligned_box_iou(a, b, "ciou", eps=0.0).item() == pytest.approx(ciou, abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "a, b",
    [
        ([2, 2, 6, 5], [2, 2, 6, 5]),  # identical
        ([3, 3, 3, 3], [3, 3, 3, 3]),  # identical points
        ([1, 1, 1, 5], [0, 0, 4, 4]),  # zero width
        ([0, 0, 4, 4], [5, 5, 5, 5]),  # zero area, disjoint
        ([0, 0, 1, 1], [7, 8, 9, 9]),  # no overlap
        ([0, 0, 2, 2], [2, 0, 4, 2]),  # touching edges
    ],
)
def test_values_and_gradients_are_finite_for_degenerate_boxes(kind, a, b):
    a = torch.tensor([a], dtype=torch.float32, requires_grad=True)
    b = torch.tensor([b], dtype=torch.float32, requires_grad=True)
    value = aligned_box_iou(a, b, kind)
    value.sum().backward()
    assert torch.isfinite(value).all()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    pairwise = PAIRWISE[kind][0](a, b)
    assert torch.isfinite(pairwise).all()


def test_ciou_alpha_carries_no_gradient():
    a = _f64([0, 0, 4, 2]).requires_grad_()
    b = _f64([1, 0, 3, 5])
    aligned_box_iou(a, b, "ciou", eps=0.0).sum().backward()
    # reference: the same expression with alpha computed from detached values
    a2 = a.detach().clone().requires_grad_()
    iou = aligned_box_iou(a2, b, "iou", eps=0.0)
    diou = aligned_box_iou(a2, b, "diou", eps=0.0)
    wa, ha = a2[..., 2] - a2[..., 0], a2[..., 3] - a2[..., 1]
    v = 4 / math.pi**2 * (math.atan(2 / 5) - torch.atan(wa / ha)) ** 2
    alpha = (v / (1 - iou + v)).detach()
    (diou - alpha * v).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad)


def test_half_precision_boxes_are_computed_in_float32():
    a = torch.tensor([[0.0, 0.0, 400.0, 400.0]], dtype=torch.float16)
    b = torch.tensor([[0.0, 0.0, 400.0, 200.0]], dtype=torch.float16)
    result = box_iou(a, b)  # areas (160000) overflow float16
    assert result.dtype == torch.float32
    assert result.item() == pytest.approx(0.5)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown IoU kind"):
        aligned_box_iou(random_boxes(2), random_boxes(2), "eiou")
