import math

import pytest
import torch

from tunedet.config.registry import REGISTRIES, build
from tunedet.engine.lr_schedule import (
    ConstantLR,
    ConstantWarmup,
    CosineLR,
    ExpLR,
    ExpWarmup,
    LinearWarmup,
    LRSchedule,
    MultiStepLR,
    NoWarmup,
    PolyLR,
    StepLR,
    StepsWithLRs,
    build_lr_schedule,
)

ITERS = [0, 1, 2, 99, 100, 101, 149, 150, 151, 299, 300, 301, 499, 500, 501, 999, 1000, 1001, 5000]


def test_constant_policy_is_one_everywhere():
    policy = ConstantLR(max_iters=1000)
    assert all(policy.factor(it) == 1.0 for it in ITERS)


@pytest.mark.parametrize("it", ITERS)
def test_step_policy_matches_gamma_power_of_floor(it):
    policy = StepLR(step_size=100, gamma=0.5)
    assert policy.factor(it) == pytest.approx(0.5 ** math.floor(it / 100))


def test_step_policy_drops_exactly_at_each_step():
    policy = StepLR(step_size=100, gamma=0.1)
    assert policy.factor(99) == 1.0
    assert policy.factor(100) == pytest.approx(0.1)
    assert policy.factor(199) == pytest.approx(0.1)
    assert policy.factor(200) == pytest.approx(0.01)


@pytest.mark.parametrize("it", ITERS)
def test_multistep_policy_counts_milestones_reached(it):
    steps = (150, 300, 1000)
    policy = MultiStepLR(steps=steps, gamma=0.1)
    k = sum(1 for s in steps if s <= it)
    assert policy.factor(it) == pytest.approx(0.1**k)


def test_multistep_policy_milestone_boundaries():
    policy = MultiStepLR(steps=(150, 300), gamma=0.1)
    assert [policy.factor(it) for it in (0, 149, 150, 299, 300, 10_000)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )


@pytest.mark.parametrize("steps", [(300, 150), (100, 100), (-1, 10)])
def test_multistep_policy_rejects_unordered_or_negative_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        MultiStepLR(steps=steps)


@pytest.mark.parametrize("alpha", [0.0, 0.05])
@pytest.mark.parametrize("it", ITERS)
def test_cosine_policy_matches_closed_form(alpha, it):
    policy = CosineLR(alpha=alpha, max_iters=1000)
    t = min(it, 1000)
    expected = (1 - alpha) * 0.5 * (1 + math.cos(math.pi * t / 1000)) + alpha
    assert policy.factor(it) == pytest.approx(expected, abs=1e-12)


def test_cosine_policy_starts_at_one_ends_at_floor_and_stays_there():
    policy = CosineLR(alpha=0.1, decay_steps=400, max_iters=1000)
    assert policy.factor(0) == pytest.approx(1.0)
    assert policy.factor(200) == pytest.approx(0.55)
    assert policy.factor(400) == pytest.approx(0.1)
    assert policy.factor(900) == pytest.approx(0.1)


def test_cosine_policy_needs_decay_steps_or_max_iters():
    with pytest.raises(ValueError, match="decay_steps"):
        CosineLR()


@pytest.mark.parametrize("it", ITERS)
def test_poly_policy_matches_closed_form(it):
    policy = PolyLR(power=0.9, end_factor=0.01, decay_steps=500)
    t = min(it, 500)
    assert policy.factor(it) == pytest.approx(0.99 * (1 - t / 500) ** 0.9 + 0.01)


def test_poly_policy_with_cycle_restarts_over_a_longer_span():
    policy = PolyLR(power=1.0, decay_steps=100, cycle=True)
    assert policy.factor(0) == pytest.approx(1.0)
    assert policy.factor(100) == pytest.approx(0.0)
    assert policy.factor(150) == pytest.approx(1 - 150 / 200)
    assert policy.factor(201) == pytest.approx(1 - 201 / 300)


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize("it", ITERS)
def test_exp_policy_matches_closed_form(staircase, it):
    policy = ExpLR(decay_rate=0.5, decay_steps=300, staircase=staircase)
    exponent = it // 300 if staircase else it / 300
    assert policy.factor(it) == pytest.approx(0.5**exponent)


def test_steps_with_lrs_gives_the_listed_lr_per_interval():
    schedule = LRSchedule(
        0.02, StepsWithLRs(steps=(0, 100, 200), lrs=(0.02, 0.002, 2e-4), base_lr=0.02)
    )
    assert [schedule.lr_at(it) for it in (0, 99, 100, 199, 200, 900)] == pytest.approx(
        [0.02, 0.02, 0.002, 0.002, 2e-4, 2e-4]
    )


def test_steps_with_lrs_rejects_count_mismatch():
    with pytest.raises(ValueError, match="lrs"):
        StepsWithLRs(steps=(100, 200), lrs=(0.1, 0.01), base_lr=0.1)


def test_no_warmup_is_one_everywhere():
    assert all(NoWarmup().factor(it) == 1.0 for it in ITERS)


@pytest.mark.parametrize("it", ITERS)
def test_constant_warmup_holds_factor_until_iters(it):
    warmup = ConstantWarmup(iters=500, factor=1 / 3)
    assert warmup.factor(it) == pytest.approx(1 / 3 if it < 500 else 1.0)


@pytest.mark.parametrize("it", ITERS)
def test_linear_warmup_matches_detectron_form(it):
    warmup = LinearWarmup(iters=500, factor=0.001)
    expected = 0.001 + (1 - 0.001) * it / 500 if it < 500 else 1.0
    assert warmup.factor(it) == pytest.approx(expected)


def test_linear_warmup_starts_at_factor_and_reaches_one_at_iters():
    warmup = LinearWarmup(iters=100, factor=0.25)
    assert warmup.factor(0) == 0.25
    assert warmup.factor(50) == pytest.approx(0.625)
    assert warmup.factor(99) < 1.0
    assert warmup.factor(100) == 1.0


@pytest.mark.parametrize("it", ITERS)
def test_exp_warmup_matches_closed_form(it):
    warmup = ExpWarmup(iters=500, factor=0.01)
    expected = 0.01 ** (1 - it / 500) if it < 500 else 1.0
    assert warmup.factor(it) == pytest.approx(expected)


@pytest.mark.parametrize("cls", [ConstantWarmup, LinearWarmup, ExpWarmup])
def test_zero_iter_warmup_is_no_warmup(cls):
    assert cls(iters=0, factor=0.1).factor(0) == 1.0


def test_schedule_multiplies_base_warmup_and_policy():
    schedule = LRSchedule(0.02, CosineLR(max_iters=1000), LinearWarmup(iters=100, factor=0.1))
    for it in ITERS:
        warm = 0.1 + 0.9 * it / 100 if it < 100 else 1.0
        cos = 0.5 * (1 + math.cos(math.pi * min(it, 1000) / 1000))
        assert schedule.lr_at(it) == pytest.approx(0.02 * warm * cos)


def test_apply_sets_each_group_lr_times_lr_mult():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr_mult": 2.0}], lr=1.0)
    schedule = LRSchedule(0.1, StepLR(step_size=10, gamma=0.1), ConstantWarmup(iters=5, factor=0.5))
    assert schedule.apply(optimizer, 0) == pytest.approx(0.05)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.1])
    schedule.apply(optimizer, 12)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.02])


def test_schedule_is_stateless_so_any_iteration_can_be_asked_in_any_order():
    schedule = LRSchedule(0.1, MultiStepLR(steps=(10, 20)), LinearWarmup(iters=5))
    forward = [schedule.lr_at(it) for it in range(30)]
    backward = [schedule.lr_at(it) for it in reversed(range(30))][::-1]
    assert forward == backward


def test_build_lr_schedule_from_specs_injects_max_iters():
    schedule = build_lr_schedule(
        0.01, {"type": "cosine", "alpha": 0.1}, {"type": "linear", "iters": 10}, max_iters=100
    )
    assert schedule.lr_at(100) == pytest.approx(0.001)
    assert schedule.lr_at(0) == pytest.approx(0.01 / 3)
    assert build("lr_policy", {"type": "step", "step_size": 5}, max_iters=10).factor(5) == 0.1


def test_every_registered_policy_and_warmup_builds_with_defaults():
    specs = {"step": {"step_size": 10}, "multistep": {"steps": (10,)}}
    specs["steps_with_lrs"] = {"steps": (10,), "lrs": (0.1, 0.01)}
    for name in REGISTRIES["lr_policy"].names():
        policy = build(
            "lr_policy", {"type": name, **specs.get(name, {})}, max_iters=50, base_lr=0.1
        )
        assert policy.factor(0) == pytest.approx(1.0)
        assert all(math.isfinite(policy.factor(it)) for it in range(0, 80, 7))
    for name in REGISTRIES["warmup"].names():
        assert build("warmup", {"type": name}).factor(10_000) == 1.0
