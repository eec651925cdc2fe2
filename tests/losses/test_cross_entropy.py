import pytest
import torch
import torch.nn.functional as F

from tunedet.config.registry import build
from tunedet.losses import (
    SoftmaxCrossEntropyLoss,
    softmax_cross_entropy,
    stable_log_softmax,
    stable_softmax,
)


def logits_case(n=50, k=6, seed=0, dtype=torch.float32, scale=5.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=dtype) * scale
    labels = torch.randint(0, k, (n,), generator=g)
    soft = torch.rand(n, k, generator=g, dtype=dtype)
    return logits, labels, soft / soft.sum(dim=1, keepdim=True)


def reference_ce(logits, targets):
    """Textbook float64 formula: −Σ q·log(exp(z) / Σ exp(z)) (fine for moderate logits)."""
    z = logits.double()
    p = z.exp() / z.exp().sum(dim=-1, keepdim=True)
    return -(targets.double() * p.log()).sum(dim=-1)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_softmax_cross_entropy_equals_torch_for_hard_and_soft_targets(reduction):
    logits, labels, soft = logits_case()
    torch.testing.assert_close(
        softmax_cross_entropy(logits, labels, reduction),
        F.cross_entropy(logits, labels, reduction=reduction),
    )
    torch.testing.assert_close(
        softmax_cross_entropy(logits, soft, reduction),
        F.cross_entropy(logits, soft, reduction=reduction),
    )


def test_softmax_cross_entropy_equals_float64_reference_to_1e_6():
    logits, labels, soft = logits_case(seed=1, dtype=torch.float64)
    torch.testing.assert_close(
        softmax_cross_entropy(logits, soft), reference_ce(logits, soft), atol=1e-6, rtol=0
    )
    one_hot = F.one_hot(labels, 6).double()
    torch.testing.assert_close(
        softmax_cross_entropy(logits, labels), reference_ce(logits, one_hot), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        stable_softmax(logits), torch.softmax(logits, -1), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_softmax_cross_entropy_is_finite_at_huge_logits(dtype):
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [60000.0, 60000.0, -60000.0]], dtype=dtype)
    logits.requires_grad_()
    targets = torch.tensor([2, 0])
    naive = -torch.log(torch.exp(logits.float()) / torch.exp(logits.float()).sum(-1, keepdim=True))
    assert not torch.isfinite(naive).all()  # what subtracting the max avoids
    loss = softmax_cross_entropy(logits, targets)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    assert loss[0].item() == pytest.approx(2000.0, rel=1e-3)
    assert loss[1].item() == pytest.approx(0.6931, rel=1e-2)  # two equal maxima: log 2
    assert torch.isfinite(stable_softmax(logits)).all()
    assert torch.isfinite(stable_log_softmax(logits)).all()


def test_softmax_cross_entropy_weights_and_normalizer():
    logits, labels, _ = logits_case(n=8, seed=2)
    weight = torch.arange(8.0)
    per_row = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(
        softmax_cross_entropy(logits, labels, "mean", weight=weight, normalizer=4.0),
        (per_row * weight).sum() / 4.0,
    )
    with pytest.raises(ValueError, match="normalizer"):
        softmax_cross_entropy(logits, labels, "sum", normalizer=4.0)


def test_softmax_ce_cls_loss_is_element_wise_and_rows_sum_to_the_loss():
    logits, labels, _ = logits_case(n=10, seed=3)
    targets = F.one_hot(labels, 6).float()
    loss = build("cls_loss", {"type": "softmax_ce"})
    assert isinstance(loss, SoftmaxCrossEntropyLoss) and loss.needs_background_logit
    values = loss(logits, targets)
    assert values.shape == (10, 6)
    torch.testing.assert_close(values.sum(1), F.cross_entropy(logits, labels, reduction="none"))
