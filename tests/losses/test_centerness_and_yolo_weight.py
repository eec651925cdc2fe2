import math

import pytest
import torch

from tunedet.losses import centerness_loss, centerness_targets, yolo_box_weight
from tunedet.losses.focal import bce_with_logits


def test_centerness_targets_follow_the_fcos_formula():
    ltrb = torch.tensor(
        [[5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 3.0, 8.0], [0.0, 4.0, 7.0, 4.0], [2.0, -1.0, 3.0, 3.0]]
    )
    expected = [1.0, math.sqrt(1 / 3 * 2 / 8), 0.0, 0.0]  # centre, generic, on an edge, outside
    torch.testing.assert_close(centerness_targets(ltrb), torch.tensor(expected))
    g = torch.Generator().manual_seed(0)
    d = torch.rand(100, 4, generator=g, dtype=torch.float64) * 50 + 0.1
    left, top, right, bottom = d.unbind(1)
    reference = torch.sqrt(
        torch.minimum(left, right)
        / torch.maximum(left, right)
        * torch.minimum(top, bottom)
        / torch.maximum(top, bottom)
    )
    torch.testing.assert_close(centerness_targets(d), reference, atol=1e-12, rtol=0)
    assert centerness_targets(torch.zeros(2, 4)).tolist() == [0.0, 0.0]  # degenerate box


def test_centerness_loss_is_bce_normalised_by_positives_with_finite_gradients():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(30, generator=g, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.rand(30, generator=g, dtype=torch.float64)
    p = torch.sigmoid(logits.detach())
    reference = -(targets * p.log() + (1 - targets) * (1 - p).log())
    torch.testing.assert_close(
        centerness_loss(logits.detach(), targets), reference, atol=1e-6, rtol=0
    )
    loss = centerness_loss(logits, targets, "mean", normalizer=7)
    torch.testing.assert_close(loss, reference.sum() / 7)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    extreme = torch.tensor([200.0, -200.0], requires_grad=True)
    value = centerness_loss(extreme, torch.tensor([0.0, 1.0]), "sum")
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(extreme.grad).all()
    empty = centerness_loss(torch.zeros(0, requires_grad=True), torch.zeros(0), "mean")
    assert empty.item() == 0.0  # no positives
    torch.testing.assert_close(
        centerness_loss(logits.detach(), targets), bce_with_logits(logits.detach(), targets)
    )


def test_yolo_box_weight_is_two_minus_normalised_area():
    boxes = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 640.0, 480.0], [10, 10, 330, 250]])
    weights = yolo_box_weight(boxes, (480, 640))
    torch.testing.assert_close(weights, torch.tensor([2.0, 1.0, 2 - 0.5 * 0.5]))
    per_image = torch.tensor([[480, 640], [240, 320]])
    batch = torch.stack([boxes, boxes])  # (2, 3, 4)
    weights = yolo_box_weight(batch, per_image[:, None])
    assert weights.shape == (2, 3)
    assert weights[1].tolist() == pytest.approx([2.0, 1.0, 1.0])  # clamped to the image
