import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvops

from tunedet.config.registry import REGISTRIES, build
from tunedet.losses import (
    CIoULoss,
    DIoULoss,
    GIoULoss,
    IoULoss,
    L1Loss,
    L2Loss,
    SmoothL1Loss,
    ciou_loss,
    diou_loss,
    giou_loss,
    iou_loss,
    l1_loss,
    l2_loss,
    smooth_l1_loss,
)


def random_boxes(n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * 100
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * 50 + 1
    return torch.cat((xy, xy + wh), dim=-1)


IOU_LOSSES = {
    "giou": (giou_loss, tvops.generalized_box_iou_loss),
    "diou": (diou_loss, tvops.distance_box_iou_loss),
    "ciou": (ciou_loss, tvops.complete_box_iou_loss),
}


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("kind", list(IOU_LOSSES))
def test_iou_family_losses_equal_torchvision(kind, reduction):
    ours, theirs = IOU_LOSSES[kind]
    pred, target = random_boxes(200, seed=1), random_boxes(200, seed=2)
    # half of the pairs overlap: shift predictions onto the targets with some noise
    pred[:100] = target[:100] + (pred[:100] - 50) * 0.1
    torch.testing.assert_close(
        ours(pred, target, reduction=reduction),
        theirs(pred, target, reduction),
        atol=1e-5,
        rtol=1e-6,
    )


@pytest.mark.parametrize("kind", list(IOU_LOSSES))
def test_iou_family_loss_gradients_equal_torchvision(kind):
    ours, theirs = IOU_LOSSES[kind]
    target = random_boxes(50, seed=3, dtype=torch.float64)
    pred = (
        target
        + torch.randn(50, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 5
    )
    pred_ours, pred_theirs = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    ours(pred_ours, target, reduction="sum").backward()
    theirs(pred_theirs, target, reduction="sum").backward()
    torch.testing.assert_close(pred_ours.grad, pred_theirs.grad, atol=1e-6, rtol=1e-5)


def test_iou_loss_is_one_minus_iou():
    pred, target = random_boxes(30, seed=5), random_boxes(30, seed=6)
    expected = 1 - tvops.box_iou(pred, target).diagonal()
    torch.testing.assert_close(iou_loss(pred, target), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss_cls", [IoULoss, GIoULoss, DIoULoss, CIoULoss])
def test_iou_family_gradients_are_finite_for_degenerate_boxes(loss_cls):
    pred = torch.tensor(
        [[2.0, 2.0, 6.0, 5.0], [3.0, 3.0, 3.0, 3.0], [1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 1.0, 1.0]],
        requires_grad=True,
    )
    # identical, identical zero-area, zero width inside, no overlap
    target = torch.tensor(
        [[2.0, 2.0, 6.0, 5.0], [3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 4.0, 4.0], [7.0, 8.0, 9.0, 9.0]]
    )
    loss = loss_cls()(pred, target)
    loss.sum().backward()
    assert loss.shape == (4,)
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()
    assert loss[0].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("beta", [1.0 / 9, 1.0, 0.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_smooth_l1_equals_torch(beta, reduction):
    g = torch.Generator().manual_seed(7)
    pred, target = torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g)
    expected = F.smooth_l1_loss(pred, target, reduction=reduction, beta=beta)
    torch.testing.assert_close(smooth_l1_loss(pred, target, beta, reduction), expected)


def test_l1_and_l2_equal_torch():
    g = torch.Generator().manual_seed(8)
    pred, target = torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g)
    torch.testing.assert_close(l1_loss(pred, target, "mean"), F.l1_loss(pred, target))
    torch.testing.assert_close(
        l2_loss(pred, target, "sum"), F.mse_loss(pred, target, reduction="sum")
    )


def test_coordinate_losses_sum_over_the_four_coordinates():
    g = torch.Generator().manual_seed(9)
    pred, target = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    torch.testing.assert_close(
        SmoothL1Loss(beta=0.5)(pred, target),
        F.smooth_l1_loss(pred, target, reduction="none", beta=0.5).sum(-1),
    )
    torch.testing.assert_close(L1Loss()(pred, target), (pred - target).abs().sum(-1))
    torch.testing.assert_close(L2Loss()(pred, target), ((pred - target) ** 2).sum(-1))


def test_coordinate_loss_gradients_are_finite_at_zero_error():
    pred = torch.zeros(3, 4, requires_grad=True)
    for loss_cls in (SmoothL1Loss, L1Loss, L2Loss):
        pred.grad = None
        loss_cls()(pred, torch.zeros(3, 4)).sum().backward()
        assert torch.isfinite(pred.grad).all()


def test_box_losses_are_registered_with_their_input_kind():
    expected = {
        "smooth_l1": False,
        "l1": False,
        "l2": False,
        "iou": True,
        "giou": True,
        "diou": True,
        "ciou": True,
    }
    for name, on_boxes in expected.items():
        assert REGISTRIES["box_loss"].get(name).target.on_boxes is on_boxes
        assert build("box_loss", {"type": name}).on_boxes is on_boxes
    assert build("box_loss", {"type": "smooth_l1", "beta": 0.25}).beta == 0.25
