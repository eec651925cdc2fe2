"""Batch samplers: plain order unchanged, rank sharding, grouping, repeat factors, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunedet.config.loader import load_config
from tunedet.data import EpochBatchSampler, SyntheticShapes, aspect_groups, repeat_factors
from tunedet.data.build import build_train_sampler
from tunedet.data.samplers import dataset_sizes_and_labels


def take(sampler, count):
    it = iter(sampler)
    return [next(it) for _ in range(count)]


def test_plain_order_is_the_seeded_permutation_in_batches():
    sampler = EpochBatchSampler(10, 4, seed=2)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(2 * 1_000_003 + 0)).tolist()
    batches = take(sampler, 2)
    assert [[i for i, _, _ in b] for b in batches] == [order[:4], order[4:8]]
    assert [{(e, b) for _, e, b in batch} for batch in batches] == [{(0, 0)}, {(0, 1)}]
    assert sampler.batches_per_epoch == 2


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_get_disjoint_slices_that_cover_every_global_batch(world_size):
    glob = 4 * world_size
    one = take(EpochBatchSampler(50, glob, seed=7), 9)
    ranks = [
        take(EpochBatchSampler(50, glob, seed=7, rank=r, world_size=world_size), 9)
        for r in range(world_size)
    ]
    for b, batch in enumerate(one):
        parts = [ranks[r][b] for r in range(world_size)]
        assert all(len(p) == 4 for p in parts)
        flat = [k for p in parts for k in p]
        assert flat == batch  # disjoint, covering, in the 1-process order
        assert len(set(flat)) == len(flat)


def test_batch_size_must_divide_among_ranks():
    with pytest.raises(ValueError, match="multiple of world_size"):
        EpochBatchSampler(50, 5, seed=0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        EpochBatchSampler(50, 4, seed=0, rank=2, world_size=2)


def reference_repeat_factors(labels, t):
    """Float64 loops straight from the LVIS paper's definition."""
    n = len(labels)
    classes = {c for ls in labels for c in ls}
    f = {c: sum(c in set(ls) for ls in labels) / n for c in classes}
    return [max([1.0] + [max(1.0, math.sqrt(t / f[c])) for c in set(ls)]) for ls in labels]


def test_repeat_factors_match_the_closed_form():
    labels = [np.array([0]), np.array([0]), np.array([0, 1]), np.array([], np.int64)]
    np.testing.assert_allclose(repeat_factors(labels, 0.5), [1, 1, math.sqrt(2), 1])
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = [rng.integers(0, 6, rng.integers(0, 4)) for _ in range(40)]
        t = float(rng.uniform(0.01, 0.8))
        np.testing.assert_allclose(
            repeat_factors(labels, t), reference_repeat_factors(labels, t), rtol=1e-12
        )


def test_repeated_images_appear_their_factor_times_on_average():
    factors = np.array([1.0, 1.5, 2.25, 3.0, 1.0, 1.0])
    sampler = EpochBatchSampler(6, 2, seed=1, repeat_factors=factors, drop_last=False)
    counts = np.zeros(6)
    epochs = 400
    for e in range(epochs):
        indices = sampler.epoch_indices(e)
        per = np.bincount(indices, minlength=6)
        assert ((per == np.floor(factors)) | (per == np.ceil(factors))).all()
        counts += per
    np.testing.assert_allclose(counts / epochs, factors, atol=0.08)


def test_resume_is_exact_across_epochs_of_varying_length():
    factors = np.random.default_rng(0).uniform(1, 3, 30)
    groups = np.arange(30) % 2
    full = take(EpochBatchSampler(30, 4, seed=5, repeat_factors=factors, group_ids=groups), 60)
    lengths = {
        len(EpochBatchSampler(30, 4, seed=5, repeat_factors=factors).epoch_batches(e))
        for e in range(5)
    }
    assert len(lengths) > 1  # epochs differ in length
    for start in (0, 13, 37):
        resumed = EpochBatchSampler(
            30, 4, seed=5, repeat_factors=factors, group_ids=groups, start_batch=start
        )
        assert take(resumed, 60 - start) == full[start:]


def test_aspect_grouping_makes_pure_batches():
    sizes = [(10, 20) if i % 3 else (20, 10) for i in range(40)]
    groups = aspect_groups(sizes)
    assert groups.tolist() == [0 if i % 3 else 1 for i in range(40)]
    sampler = EpochBatchSampler(40, 4, seed=0, group_ids=groups)
    for epoch in range(3):
        batches = sampler.epoch_batches(epoch)
        pure = [len({int(groups[i]) for i in b}) == 1 for b in batches]
        assert sum(pure) >= len(batches) - 1  # only the last (leftover) batch may mix
        assert all(len(b) == 4 for b in batches)


def test_sizes_and_labels_of_synthetic_shapes_match_its_samples():
    ds = SyntheticShapes(num_images=6, image_size=32)
    sizes, labels = dataset_sizes_and_labels(ds)
    assert sizes == [(32, 32)] * 6
    assert [x.tolist() for x in labels] == [ds[i]["labels"].tolist() for i in range(6)]


def test_build_train_sampler_reads_data_sampler():
    cfg = load_config(
        "retinanet/demo",
        [
            "data.train.num_images=32",
            "data.batch_size=4",
            "data.sampler.repeat_threshold=0.5",
            "data.sampler.aspect_grouping=true",
        ],
    )
    ds = SyntheticShapes(num_images=32, image_size=32)
    sampler = build_train_sampler(cfg.data, ds, seed=0, rank=1, world_size=2)
    assert sampler.global_batch == 8 and sampler.batch_size == 4
    assert sampler.repeat_factors is not None and sampler.group_ids is not None
    assert (sampler.repeat_factors >= 1).all()


def test_resumed_loader_gives_the_same_mixed_and_multi_scale_batches():
    from tunedet.data.build import build_loader

    cfg = load_config("retinanet/demo", ["data.batch_size=2"])
    specs = [
        {"type": "mosaic", "size": 48, "p": 0.5},
        {"type": "mixup", "p": 0.5},
        {"type": "copy_paste", "p": 0.5},
        {"type": "multi_scale", "sizes": [32, 48]},
        {"type": "normalize"},
    ]
    ds = SyntheticShapes(num_images=10, image_size=32)

    def batches(start, count):
        sampler = build_train_sampler(cfg.data, ds, seed=4, start_batch=start)
        loader = build_loader(ds, specs, seed=4, batch_sampler=sampler)
        it = iter(loader)
        return [next(it) for _ in range(count)]

    full = batches(0, 9)  # almost two epochs of 5 batches
    for a, b in zip(full[6:], batches(6, 3), strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.gt_boxes, b.gt_boxes)
    assert len({tuple(b.images.shape[-2:]) for b in full}) > 1
