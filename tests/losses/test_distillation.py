"""Knowledge distillation terms: zero when student == teacher, float64 references, T² scaling."""

import math

import pytest
import torch
import torch.nn.functional as F

from tunedet.losses.distillation import (
    distillation_loss,
    sigmoid_distillation,
    softmax_distillation,
)


def softmax64(row, t):
    m = max(x / t for x in row)
    e = [math.exp(x / t - m) for x in row]
    return [v / sum(e) for v in e]


def sigmoid64(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_softmax_distillation_is_zero_when_student_equals_teacher(temperature):
    logits = torch.randn(5, 7) * 3
    torch.testing.assert_close(
        softmax_distillation(logits, logits.clone(), temperature), torch.zeros(5)
    )


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_softmax_distillation_matches_float64_reference(temperature):
    torch.manual_seed(0)
    z, r = torch.randn(4, 5) * 3, torch.randn(4, 5) * 3
    got = softmax_distillation(z, r, temperature)
    for i in range(4):
        p, q = softmax64(z[i].tolist(), temperature), softmax64(r[i].tolist(), temperature)
        kl = sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))
        assert got[i].item() == pytest.approx(temperature**2 * kl, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_sigmoid_distillation_matches_float64_reference_and_is_zero_at_equality(temperature):
    torch.manual_seed(1)
    z, r = torch.randn(3, 4) * 4, torch.randn(3, 4) * 4
    got = sigmoid_distillation(z, r, temperature)
    for i in range(3):
        for j in range(4):
            p, q = sigmoid64(z[i, j].item() / temperature), sigmoid64(r[i, j].item() / temperature)
            bce = -(q * math.log(p) + (1 - q) * math.log(1 - p))
            entropy = -(q * math.log(q) + (1 - q) * math.log(1 - q))
            ref = temperature**2 * (bce - entropy)
            assert got[i, j].item() == pytest.approx(ref, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(sigmoid_distillation(z, z.clone(), temperature), torch.zeros(3, 4))


def test_sigmoid_distillation_gradient_equals_t2_bce_gradient_with_teacher_targets():
    torch.manual_seed(3)
    r = torch.randn(6, 3)
    z = torch.randn(6, 3, requires_grad=True)
    sigmoid_distillation(z, r, 2.0).sum().backward()
    z2 = z.detach().clone().requires_grad_()
    bce = F.binary_cross_entropy_with_logits(z2 / 2.0, torch.sigmoid(r / 2.0), reduction="sum")
    (4.0 * bce).backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_distillation_terms_are_finite_for_extreme_logits():
    z = torch.tensor([[1e4, -1e4, 0.0]])
    r = torch.tensor([[-1e4, 1e4, 0.0]])
    assert torch.isfinite(softmax_distillation(z, r, 1.0)).all()
    assert torch.isfinite(sigmoid_distillation(z, r, 1.0)).all()


def test_teacher_gets_no_gradient():
    z = torch.randn(2, 3, requires_grad=True)
    r = torch.randn(2, 3, requires_grad=True)
    (softmax_distillation(z, r, 2.0).sum() + sigmoid_distillation(z, r, 2.0).sum()).backward()
    assert r.grad is None and z.grad is not None


def test_full_softmax_objective_is_ce_plus_weighted_t2_kl():
    torch.manual_seed(2)
    z, r, labels = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    got = distillation_loss(z, r, labels, temperature=2.0, weight=0.5, reduction="none")
    ce = torch.nn.functional.cross_entropy(z, labels, reduction="none")
    torch.testing.assert_close(got, ce + 0.5 * softmax_distillation(z, r, 2.0))
    assert distillation_loss(z, r, labels, 2.0, 0.5).item() == pytest.approx(got.mean().item())


@pytest.mark.parametrize("fn", [softmax_distillation, sigmoid_distillation])
def test_distillation_rejects_non_positive_temperature(fn):
    with pytest.raises(ValueError, match="temperature"):
        fn(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)
