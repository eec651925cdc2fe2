import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvops

from tunedet.config.registry import build
from tunedet.losses import BCEWithLogitsLoss, FocalLoss, bce_with_logits, sigmoid_focal_loss


def logits_and_targets(n=64, c=5, seed=0, soft=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=dtype) * 4
    if soft:
        targets = torch.rand(n, c, generator=g, dtype=dtype)
    else:
        targets = (torch.rand(n, c, generator=g) < 0.2).to(dtype)
    return logits, targets


def focal_reference_float64(logits, targets, alpha, gamma):
    """Textbook formula in float64, log of the probabilities (fine for moderate logits)."""
    x, t = logits.double(), targets.double()
    p = torch.sigmoid(x)
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 1.5), (0.5, 0.0)])
def test_sigmoid_focal_loss_equals_torchvision(reduction, alpha, gamma):
    logits, targets = logits_and_targets()
    ours = sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    theirs = tvops.sigmoid_focal_loss(logits, targets, alpha, gamma, reduction)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 0.5), (0.75, 1.0)])
def test_sigmoid_focal_loss_equals_float64_reference(soft, alpha, gamma):
    logits, targets = logits_and_targets(seed=1, soft=soft, dtype=torch.float64)
    reference = focal_reference_float64(logits, targets, alpha, gamma)
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha, gamma), reference)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_focal_loss_is_finite_with_finite_gradients_at_extreme_logits(gamma, dtype):
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0, 1000.0, -1000.0]], dtype=dtype)
    logits.requires_grad_()
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]], dtype=dtype)
    loss = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=gamma)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    # confident and right: ~0; confident and wrong: ~alpha_t * |logit|
    assert loss[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert loss[0, 2].item() == pytest.approx(0.75 * 100, rel=1e-2)
    assert loss[0, 3].item() == pytest.approx(0.25 * 100, rel=1e-2)


def test_gamma_zero_without_alpha_is_bce_with_logits():
    logits, targets = logits_and_targets(seed=2, soft=True)
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0), expected)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_bce_with_logits_equals_torch_and_handles_soft_targets(reduction):
    logits, targets = logits_and_targets(seed=3, soft=True)
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)
    torch.testing.assert_close(bce_with_logits(logits, targets, reduction), expected)


def test_bce_is_finite_at_extreme_logits():
    logits = torch.tensor([100.0, -100.0, 200.0], requires_grad=True)
    loss = bce_with_logits(logits, torch.tensor([0.0, 1.0, 0.3]))
    loss.sum().backward()
    torch.testing.assert_close(loss.detach(), torch.tensor([100.0, 100.0, 140.0]))
    assert torch.isfinite(logits.grad).all()


def test_focal_and_bce_classes_return_unreduced_loss():
    logits, targets = logits_and_targets(n=7, c=3, seed=4)
    focal = FocalLoss(alpha=0.5, gamma=1.0)
    assert focal(logits, targets).shape == (7, 3)
    torch.testing.assert_close(
        focal(logits, targets), sigmoid_focal_loss(logits, targets, 0.5, 1.0)
    )
    assert BCEWithLogitsLoss()(logits, targets).shape == (7, 3)


def test_classification_losses_are_registered():
    focal = build("cls_loss", {"type": "focal", "alpha": -1.0, "gamma": 1.5})
    assert isinstance(focal, FocalLoss) and (focal.alpha, focal.gamma) == (-1.0, 1.5)
    assert isinstance(build("cls_loss", {"type": "bce"}), BCEWithLogitsLoss)


def test_unknown_reduction_raises():
    logits, targets = logits_and_targets(n=2, c=2)
    with pytest.raises(ValueError, match="unknown reduction"):
        sigmoid_focal_loss(logits, targets, reduction="avg")
