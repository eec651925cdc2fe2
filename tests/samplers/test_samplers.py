import pytest
import torch

from tunedet.assigners import AssignResult
from tunedet.config.registry import build
from tunedet.samplers import (
    HardNegativeSampler,
    IoUBalancedNegSampler,
    OHEMSampler,
    PseudoSampler,
    RandomSampler,
    pick_per_image,
)


def assignment(num_pos=(30, 4, 0), num_anchors=2000, seed=0):
    """Images with the given positive counts, 10 % ignored, the rest negatives of IoU
    spread uniformly over [0, 0.4)."""
    g = torch.Generator().manual_seed(seed)
    matched = torch.zeros(len(num_pos), num_anchors, dtype=torch.long)
    for i, n in enumerate(num_pos):
        order = torch.randperm(num_anchors, generator=g)
        matched[i, order[:n]] = 1
        matched[i, order[n : n + num_anchors // 10]] = -1
    max_iou = torch.rand(len(num_pos), num_anchors, generator=g) * 0.4
    max_iou[matched > 0] = 0.7
    return AssignResult(matched, max_iou)


def test_pseudo_takes_every_non_ignored_anchor():
    result = assignment()
    assert torch.equal(PseudoSampler().sample(result), result.matched >= 0)


def test_random_sampler_counts_and_positive_fraction():
    torch.manual_seed(0)
    result = assignment()
    sampled = RandomSampler(num=256, pos_fraction=0.25).sample(result)
    pos = (sampled & result.positive).sum(1).tolist()
    neg = (sampled & result.negative).sum(1).tolist()
    assert pos == [30, 4, 0]  # fewer positives than 64: all of them
    assert neg == [226, 252, 256]  # negatives fill up to num
    assert not (sampled & (result.matched < 0)).any()
    capped = RandomSampler(num=40, pos_fraction=0.5).sample(result)
    assert (capped & result.positive).sum(1).tolist() == [20, 4, 0]
    bounded = RandomSampler(num=256, pos_fraction=0.5, neg_pos_ub=3).sample(result)
    assert (bounded & result.negative).sum(1).tolist() == [90, 12, 3]  # 3 · max(#pos, 1)


def test_random_sampler_draws_uniformly():
    torch.manual_seed(1)
    result = assignment(num_pos=(0,), num_anchors=400)
    counts = sum(RandomSampler(num=40).sample(result)[0].float() for _ in range(400))
    negatives = result.negative[0]
    # each negative is drawn with probability 40 / #negatives
    expected = 400 * 40 / negatives.sum()
    assert (counts[~negatives] == 0).all()
    assert abs(counts[negatives].mean() - expected) < 1e-3
    assert counts[negatives].std() < 0.35 * expected


def test_ohem_keeps_the_highest_loss_anchors():
    result = assignment()
    loss = torch.rand(result.matched.shape, generator=torch.Generator().manual_seed(2))
    sampled = OHEMSampler(num=64, pos_fraction=0.25).sample(result, loss)
    for i in range(3):
        pos, neg = result.positive[i], result.negative[i]
        chosen_pos = sampled[i] & pos
        assert chosen_pos.sum() == min(16, pos.sum())
        assert (sampled[i] & neg).sum() == 64 - chosen_pos.sum()
        if chosen_pos.any() and (pos & ~sampled[i]).any():
            assert loss[i][chosen_pos].min() >= loss[i][pos & ~sampled[i]].max()
        assert loss[i][sampled[i] & neg].min() >= loss[i][neg & ~sampled[i]].max()
    with pytest.raises(ValueError, match="anchor_loss"):
        OHEMSampler().sample(result)


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    result = assignment()
    loss = torch.rand(result.matched.shape, generator=torch.Generator().manual_seed(3))
    sampled = HardNegativeSampler().sample(result, loss)
    assert (sampled & result.positive).sum(1).tolist() == [30, 4, 0]  # every positive
    assert (sampled & result.negative).sum(1).tolist() == [90, 12, 0]
    for i in range(2):
        neg = result.negative[i]
        assert loss[i][sampled[i] & neg].min() >= loss[i][neg & ~sampled[i]].max()
    floor = HardNegativeSampler(neg_pos_ratio=3, min_negatives=5).sample(result, loss)
    assert (floor & result.negative).sum(1).tolist() == [90, 12, 5]


def test_iou_balanced_sampler_splits_negatives_evenly_over_iou_bins():
    torch.manual_seed(4)
    result = assignment(num_pos=(10,), num_anchors=6000)
    # make high-IoU negatives rare: 80 % of negatives below 0.1
    iou = result.max_iou.clone()
    negatives = result.negative
    rare = torch.rand(iou.shape) < 0.8
    iou[negatives & rare] *= 0.25
    result = AssignResult(result.matched, iou)
    sampled = IoUBalancedNegSampler(num=310, pos_fraction=0.5, num_bins=3).sample(result)
    chosen = sampled & negatives
    assert chosen.sum() == 300 and (sampled & result.positive).sum() == 10
    top = iou[negatives].max()
    bins = (iou[chosen] / (top / 3)).floor().clamp(max=2).long()
    assert torch.bincount(bins, minlength=3).tolist() == [100, 100, 100]
    uniform = RandomSampler(num=310, pos_fraction=0.5).sample(result) & negatives
    uniform_bins = (iou[uniform] / (top / 3)).floor().clamp(max=2).long()
    assert torch.bincount(uniform_bins, minlength=3)[2] < 40  # what balancing fixes


def test_iou_balanced_sampler_fills_short_bins_and_honours_the_floor():
    torch.manual_seed(5)
    result = assignment(num_pos=(0,), num_anchors=1000)
    iou = result.max_iou.clone()
    negatives = result.negative
    iou[negatives] = 0.05  # everything in the lowest part...
    iou[0, negatives[0].nonzero()[:5, 0]] = 0.39  # ...but five
    result = AssignResult(result.matched, iou)
    sampled = IoUBalancedNegSampler(num=90, pos_fraction=0.25, num_bins=3).sample(result)
    assert (sampled & negatives).sum() == 90  # the short top bin's shortfall is filled
    assert (sampled & (iou == 0.39)).sum() == 5
    floored = IoUBalancedNegSampler(
        num=90, pos_fraction=0.25, floor_thr=0.1, floor_fraction=0.5
    ).sample(result)
    assert (floored & negatives).sum() == 90
    assert (floored & (iou == 0.39)).sum() == 5
    with pytest.raises(ValueError, match="floor_thr"):
        IoUBalancedNegSampler(floor_fraction=0.5)


def test_pick_per_image_takes_top_keys_and_all_when_short():
    candidates = torch.tensor([[True, True, False, True], [False, True, False, False]])
    keys = torch.tensor([[0.1, 0.9, 5.0, 0.5], [0.0, 0.2, 0.0, 0.0]])
    chosen = pick_per_image(candidates, torch.tensor([2, 3]), keys)
    assert chosen.tolist() == [[False, True, False, True], [False, True, False, False]]
    assert not pick_per_image(candidates, torch.tensor([0, 0])).any()


def test_samplers_build_from_registry():
    assert build("sampler", {"type": "random", "num": 512, "pos_fraction": 0.25}).num == 512
    assert build("sampler", {"type": "ohem"}).needs_loss
    assert build("sampler", {"type": "hard_negative"}).neg_pos_ratio == 3.0
    assert build("sampler", {"type": "iou_balanced_neg", "num_bins": 4}).num_bins == 4
    assert not build("sampler", {"type": "pseudo"}).needs_loss
