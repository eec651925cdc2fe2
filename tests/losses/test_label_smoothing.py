"""Label smoothing: softmax targets (1 − ε / ε/(K−1)), stable soft-target CE, sigmoid form."""

import math

import pytest
import torch

from tunedet.losses.cross_entropy import softmax_cross_entropy
from tunedet.losses.focal import BCEWithLogitsLoss, FocalLoss, bce_with_logits, sigmoid_focal_loss
from tunedet.losses.label_smoothing import (
    LabelSmoothingCrossEntropy,
    label_smoothing_targets,
    smooth_binary_targets,
)


def test_label_smoothing_targets_put_one_minus_eps_on_the_label_and_share_eps():
    targets = label_smoothing_targets(torch.tensor([2, 0]), num_classes=5, eps=0.2)
    assert targets[0].tolist() == pytest.approx([0.05, 0.05, 0.8, 0.05, 0.05])
    assert targets[1].tolist() == pytest.approx([0.8, 0.05, 0.05, 0.05, 0.05])
    assert targets.sum(-1).tolist() == pytest.approx([1.0, 1.0])


def test_label_smoothing_with_zero_eps_is_one_hot():
    labels = torch.tensor([1, 3, 0])
    assert torch.equal(
        label_smoothing_targets(labels, 4, 0.0), torch.nn.functional.one_hot(labels, 4).float()
    )


@pytest.mark.parametrize("eps, k", [(-0.1, 3), (1.0, 3), (0.1, 1)])
def test_label_smoothing_rejects_bad_eps_or_class_count(eps, k):
    with pytest.raises(ValueError):
        label_smoothing_targets(torch.tensor([0]), k, eps)


def test_softmax_cross_entropy_matches_float64_reference():
    torch.manual_seed(0)
    logits = torch.randn(6, 4) * 5
    targets = label_smoothing_targets(torch.randint(0, 4, (6,)), 4, 0.1)
    got = softmax_cross_entropy(logits, targets)
    for i in range(6):
        row = logits[i].double().tolist()
        norm = math.log(sum(math.exp(x) for x in row))
        ref = -sum(q * (x - norm) for q, x in zip(targets[i].tolist(), row, strict=True))
        assert got[i].item() == pytest.approx(ref, rel=1e-5)


def test_softmax_cross_entropy_is_finite_for_huge_logits_and_equals_torch_with_hard_labels():
    logits = torch.tensor([[1000.0, -1000.0, 0.0], [-5e4, 5e4, 3.0]])
    labels = torch.tensor([1, 0])
    got = softmax_cross_entropy(logits, label_smoothing_targets(labels, 3, 0.1))
    assert torch.isfinite(got).all()
    hard = softmax_cross_entropy(logits, torch.nn.functional.one_hot(labels, 3).float())
    torch.testing.assert_close(
        hard, torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    )


def test_label_smoothing_cross_entropy_module_matches_torch_uniform_form():
    # torch's label_smoothing=s mixes with s/K; ours with eps/(K−1): eps = s·(K−1)/K is the same
    torch.manual_seed(1)
    logits, labels, k, s = torch.randn(5, 4), torch.randint(0, 4, (5,)), 4, 0.2
    ours = LabelSmoothingCrossEntropy(eps=s * (k - 1) / k)(logits, labels)
    theirs = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=s, reduction="none")
    torch.testing.assert_close(ours, theirs)


def test_sigmoid_smoothing_maps_targets_towards_one_half():
    t = torch.tensor([0.0, 1.0, 0.5])
    assert smooth_binary_targets(t, 0.1).tolist() == pytest.approx([0.05, 0.95, 0.5])
    assert smooth_binary_targets(t, 0.0) is t


def test_focal_and_bce_label_smoothing_knob_smooths_the_targets():
    torch.manual_seed(2)
    logits = torch.randn(8, 3)
    targets = (torch.rand(8, 3) > 0.7).float()
    smoothed = targets * 0.8 + 0.1
    torch.testing.assert_close(
        FocalLoss(alpha=0.25, gamma=2.0, label_smoothing=0.2)(logits, targets),
        sigmoid_focal_loss(logits, smoothed, 0.25, 2.0),
    )
    torch.testing.assert_close(
        BCEWithLogitsLoss(label_smoothing=0.2)(logits, targets), bce_with_logits(logits, smoothed)
    )
    torch.testing.assert_close(FocalLoss()(logits, targets), sigmoid_focal_loss(logits, targets))
