"""Box losses against float64 references, with weights, and at degenerate inputs."""

import pytest
import torch
import torchvision.ops as tvops

from tunedet.losses import (
    ciou_loss,
    diou_loss,
    giou_loss,
    iou_loss,
    l1_loss,
    l2_loss,
    smooth_l1_loss,
)


def boxes64(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 1], 1)


def test_iou_family_equals_torchvision_in_float64_to_1e_6():
    target = boxes64(100, 0)
    pred = (
        target
        + torch.randn(100, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 8
    )
    pred[:, 2:] = torch.maximum(pred[:, 2:], pred[:, :2] + 0.5)
    for ours, theirs in (
        (giou_loss, tvops.generalized_box_iou_loss),
        (diou_loss, tvops.distance_box_iou_loss),
        (ciou_loss, tvops.complete_box_iou_loss),
    ):
        torch.testing.assert_close(ours(pred, target), theirs(pred, target), atol=1e-6, rtol=0)
    expected = 1 - tvops.box_iou(pred, target).diagonal()
    torch.testing.assert_close(iou_loss(pred, target), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss", [iou_loss, giou_loss, diou_loss, ciou_loss])
def test_iou_family_weight_and_normalizer(loss):
    pred, target = boxes64(10, 2), boxes64(10, 3)
    weight = torch.linspace(0, 2, 10, dtype=torch.float64)
    plain = loss(pred, target)
    torch.testing.assert_close(
        loss(pred, target, reduction="sum", weight=weight), (plain * weight).sum()
    )
    torch.testing.assert_close(
        loss(pred, target, reduction="mean", weight=weight, normalizer=3),
        (plain * weight).sum() / 3,
    )


def test_coordinate_losses_take_weights():
    g = torch.Generator().manual_seed(4)
    pred, target = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    weight = torch.rand(5, 1, generator=g)
    torch.testing.assert_close(
        smooth_l1_loss(pred, target, 0.5, "sum", weight=weight),
        (smooth_l1_loss(pred, target, 0.5) * weight).sum(),
    )
    torch.testing.assert_close(
        l1_loss(pred, target, "mean", weight, 2.0), ((pred - target).abs() * weight).sum() / 2
    )
    torch.testing.assert_close(l2_loss(pred, target, "none", weight), (pred - target) ** 2 * weight)


@pytest.mark.parametrize(
    "loss", [iou_loss, giou_loss, diou_loss, ciou_loss, l1_loss, l2_loss, smooth_l1_loss]
)
def test_losses_have_finite_gradients_at_degenerate_cases(loss):
    # identical, identical zero-area, zero-area inside, no overlap
    pred = torch.tensor(
        [[2.0, 2.0, 6.0, 5.0], [3.0, 3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 1.0, 1.0]],
        requires_grad=True,
    )
    target = torch.tensor(
        [[2.0, 2.0, 6.0, 5.0], [3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 4.0, 4.0], [7.0, 8.0, 9.0, 9.0]]
    )
    value = loss(pred, target, reduction="sum")
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(pred.grad).all()
    # no positives: an empty batch reduces to 0 with a (finite) gradient
    empty = torch.zeros(0, 4, requires_grad=True)
    for reduction in ("sum", "mean"):
        value = loss(empty, torch.zeros(0, 4), reduction=reduction)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(empty.grad).all()
