import math

import pytest
import torch

from tunedet.config.registry import REGISTRIES, build
from tunedet.engine.lr_policies import (
    ConstantLR,
    CosineLR,
    CosineRestartsLR,
    ExpLR,
    MultiStepLR,
    OneCycleLR,
    PolyLR,
    StepLR,
    StepsWithLRs,
)
from tunedet.engine.lr_schedule import (
    ConstantWarmup,
    ExpWarmup,
    LinearWarmup,
    LRChangeLog,
    LRSchedule,
    MomentumCorrection,
    NoWarmup,
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


def detectron_steps_with_decay(base_lr, gamma, steps, max_iter, cur_iter):
    """Detectron's lr_func_steps_with_decay / get_step_index (detectron/utils/lr_policy.py)."""
    assert steps[0] == 0
    ind = next(i for i, step in enumerate([*steps, max_iter]) if cur_iter < step)
    return base_lr * gamma ** (ind - 1)


@pytest.mark.parametrize("it", [0, 1, 59_999, 60_000, 60_001, 79_999, 80_000, 89_999])
def test_multistep_with_detectrons_leading_zero_matches_detectron(it):
    # configs/12_2017_baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml
    policy = MultiStepLR(steps=(0, 60_000, 80_000), gamma=0.1, max_iters=90_000)
    expected = detectron_steps_with_decay(0.02, 0.1, [0, 60_000, 80_000], 90_000, it)
    assert 0.02 * policy.factor(it) == pytest.approx(expected, rel=1e-12)


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
        start = 1 / 25 if name == "onecycle" else 1.0  # one-cycle starts at base/div_factor
        assert policy.factor(0) == pytest.approx(start)
        assert all(math.isfinite(policy.factor(it)) for it in range(0, 80, 7))
    for name in REGISTRIES["warmup"].names():
        assert build("warmup", {"type": name}).factor(10_000) == 1.0  # gradual: multiplier 1


# ------------------------------------------------------------- cosine with restarts


def sgdr_reference(it, period, mult, decay, alpha):
    """Closed form of SGDR: cycle i covers [period·(mult^i − 1)/(mult − 1), ... + period·mult^i)."""
    if mult == 1:
        i, t, length = it // period, it % period, period
    else:
        i = math.floor(math.log(1 + it * (mult - 1) / period, mult) + 1e-12)
        start = period * (mult**i - 1) / (mult - 1)
        if it < start:  # guard against log rounding just below a restart
            i -= 1
            start = period * (mult**i - 1) / (mult - 1)
        t, length = it - start, period * mult**i
    c = 0.5 * (1 + math.cos(math.pi * t / length))
    return decay**i * ((1 - alpha) * c + alpha)


RESTART_ITERS = [
    0,
    1,
    50,
    99,
    100,
    101,
    199,
    200,
    299,
    300,
    301,
    499,
    699,
    700,
    701,
    1499,
    1500,
    3000,
]


@pytest.mark.parametrize("mult, decay, alpha", [(1.0, 1.0, 0.0), (1.0, 0.5, 0.1), (2.0, 0.7, 0.05)])
@pytest.mark.parametrize("it", RESTART_ITERS)
def test_cosine_restarts_matches_sgdr_closed_form(mult, decay, alpha, it):
    policy = CosineRestartsLR(period=100, period_mult=mult, restart_decay=decay, alpha=alpha)
    assert policy.factor(it) == pytest.approx(
        sgdr_reference(it, 100, mult, decay, alpha), abs=1e-12
    )


def test_cosine_restarts_jumps_back_up_at_each_restart():
    policy = CosineRestartsLR(period=100, period_mult=2.0, restart_decay=0.5)
    # cycles: [0, 100), [100, 300), [300, 700)
    assert policy.factor(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert policy.factor(100) == pytest.approx(0.5)
    assert policy.factor(299) < 1e-3
    assert policy.factor(300) == pytest.approx(0.25)
    assert policy.factor(500) == pytest.approx(0.25 * 0.5)  # middle of the 400-long cycle


def test_cosine_restarts_with_one_cycle_is_cosine():
    restarts = CosineRestartsLR(max_iters=1000)
    cosine = CosineLR(max_iters=1000)
    assert [restarts.factor(it) for it in range(0, 1000, 37)] == pytest.approx(
        [cosine.factor(it) for it in range(0, 1000, 37)]
    )


# ------------------------------------------------------------------------ one-cycle


def onecycle_reference(it, total, pct, div, final_div, lo_m, hi_m):
    peak = round(pct * total)

    def cos_interp(a, b, f):
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * f))

    if it < peak:
        f = it / peak
        return cos_interp(1 / div, 1.0, f), cos_interp(hi_m, lo_m, f)
    f = min(1.0, (it - peak) / (total - peak))
    return cos_interp(1.0, 1 / (div * final_div), f), cos_interp(lo_m, hi_m, f)


@pytest.mark.parametrize("it", [0, 1, 150, 299, 300, 301, 650, 999, 1000, 1200])
def test_onecycle_lr_and_momentum_match_closed_form(it):
    policy = OneCycleLR(pct_start=0.3, div_factor=25, final_div_factor=1e4, max_iters=1000)
    lr, momentum = onecycle_reference(it, 1000, 0.3, 25, 1e4, 0.85, 0.95)
    assert policy.factor(it) == pytest.approx(lr, abs=1e-12)
    assert policy.momentum(it) == pytest.approx(momentum, abs=1e-12)


def test_onecycle_boundaries_start_peak_and_end():
    policy = OneCycleLR(pct_start=0.25, div_factor=10, final_div_factor=100, max_iters=400)
    assert policy.factor(0) == pytest.approx(0.1)
    assert policy.factor(100) == pytest.approx(1.0)
    assert policy.momentum(100) == pytest.approx(0.85)
    assert policy.factor(400) == pytest.approx(0.1 / 100)
    assert policy.momentum(0) == pytest.approx(0.95) == policy.momentum(400)


def test_onecycle_linear_anneal_is_piecewise_linear():
    policy = OneCycleLR(
        pct_start=0.5, div_factor=4, final_div_factor=2, anneal="linear", max_iters=200
    )
    assert policy.factor(50) == pytest.approx(0.25 + 0.75 * 0.5)
    assert policy.factor(150) == pytest.approx(1.0 + (0.125 - 1.0) * 0.5)


def test_schedule_sets_sgd_momentum_and_adam_beta1_from_onecycle():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([a], lr=1.0, momentum=0.9)
    adam = torch.optim.Adam([b], lr=1.0, betas=(0.9, 0.99))
    schedule = LRSchedule(0.1, OneCycleLR(max_iters=100))
    for optimizer in (sgd, adam):
        schedule.apply(optimizer, 30)
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.1)
    assert sgd.param_groups[0]["momentum"] == pytest.approx(0.85)
    assert adam.param_groups[0]["betas"] == pytest.approx((0.85, 0.99))


def test_schedule_leaves_momentum_alone_without_a_momentum_policy():
    a = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([a], lr=1.0, momentum=0.9)
    LRSchedule(0.1, OneCycleLR(cycle_momentum=False, max_iters=100)).apply(sgd, 30)
    LRSchedule(0.1, CosineLR(max_iters=100)).apply(sgd, 30)
    assert sgd.param_groups[0]["momentum"] == 0.9


# -------------------------------------------------------------- gradual warmup


@pytest.mark.parametrize("it", [0, 1, 50, 99, 100, 101, 150, 599, 600, 700])
def test_gradual_warmup_ramps_to_multiplier_then_hands_over_to_the_policy(it):
    schedule = build_lr_schedule(
        0.01,
        {"type": "multistep", "steps": (200, 400)},
        {"type": "gradual", "iters": 100, "multiplier": 8.0},
        max_iters=1000,
    )
    if it < 100:
        expected = 0.01 * (1 + 7 * it / 100)
    else:  # multistep on base·multiplier, its clock starting at the end of the warmup
        expected = 0.08 * 0.1 ** sum(1 for s in (200, 400) if s <= it - 100)
    assert schedule.lr_at(it) == pytest.approx(expected, rel=1e-12)


def test_gradual_warmup_with_multiplier_one_starts_at_zero_and_cosine_spans_the_rest():
    schedule = build_lr_schedule(
        0.1, {"type": "cosine"}, {"type": "gradual", "iters": 10, "multiplier": 1.0}, max_iters=110
    )
    assert schedule.lr_at(0) == 0.0
    assert schedule.lr_at(5) == pytest.approx(0.05)
    assert schedule.lr_at(10) == pytest.approx(0.1)  # hand-over: cosine at its iteration 0
    assert schedule.lr_at(60) == pytest.approx(0.05)  # middle of the 100 remaining iterations
    assert schedule.lr_at(110) == pytest.approx(0.0, abs=1e-15)


def warmup_closed_form(kind: str, it: int, iters: int = 20, start: float = 1 / 3) -> float:
    """The warmups' factors with their defaults (``factor`` 1/3, ``multiplier`` 1)."""
    if kind == "none" or it >= iters:
        return 1.0
    return {
        "constant": start,
        "linear": start + (1 - start) * it / iters,
        "exp": start ** (1 - it / iters),
        "gradual": it / iters,
    }[kind]


def policy_closed_form(kind: str, t: int, length: int) -> float:
    """cosine_restarts (one cycle of ``length``, restarting) and onecycle (peak at
    0.3·length, from 1/25 up to 1 and down to 1/25/1e4, cosine-annealed)."""
    if kind == "cosine_restarts":
        return 0.5 * (1 + math.cos(math.pi * (t % length) / length))
    peak, low, end = round(0.3 * length), 1 / 25, 1 / 25 / 1e4
    if t < peak:
        return 1 + (low - 1) * 0.5 * (1 + math.cos(math.pi * t / peak))
    frac = min((t - peak) / (length - peak), 1.0)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * frac))


@pytest.mark.parametrize("warmup", ["none", "constant", "linear", "exp", "gradual"])
@pytest.mark.parametrize("policy", ["cosine_restarts", "onecycle"])
def test_new_policies_compose_with_every_warmup(warmup, policy):
    spec = {"type": warmup, **({} if warmup == "none" else {"iters": 20})}
    schedule = build_lr_schedule(0.1, {"type": policy}, spec, max_iters=200)
    # a gradual warmup hands over: the policy's clock and length start after it
    offset = 20 if warmup == "gradual" else 0
    for it in (0, 10, 19, 20, 21, 100, 199, 250):
        policy_it = max(0, it - offset)
        expected = 0.1 * warmup_closed_form(warmup, it)
        expected *= policy_closed_form(policy, policy_it, 200 - offset)
        assert schedule.lr_at(it) == pytest.approx(expected, rel=1e-9, abs=1e-15)


# ------------------------------------------------------------ momentum correction


def detectron_momentum_sgd(lrs, grads_fn, w0, momentum, threshold):
    """Caffe2's update v = m·v + lr·g, w -= v, with v *= new/old only on large lr changes."""
    w, v, previous = w0, 0.0, None
    for lr in lrs:
        if previous is not None and max(lr / previous, previous / lr) > threshold:
            v *= lr / previous
        v = momentum * v + lr * grads_fn(w)
        w -= v
        previous = lr
    return w


def test_scale_momentum_reproduces_detectron_updates():
    # warmup-like small changes (not corrected by Detectron) and a 10x step (corrected)
    lrs = [0.1 * (0.5 + 0.05 * i) for i in range(8)] + [0.09, 0.009, 0.009, 0.0095]
    w = torch.nn.Parameter(torch.tensor([1.5], dtype=torch.float64))
    optimizer = torch.optim.SGD([w], lr=lrs[0], momentum=0.9)
    correction = MomentumCorrection(threshold=1.1)
    for i, lr in enumerate(lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        if i > 0:
            correction.apply(optimizer, lrs[i - 1], lr)
        optimizer.zero_grad()
        (0.5 * w**2 + torch.sin(w)).sum().backward()
        optimizer.step()
    expected = detectron_momentum_sgd(lrs, lambda x: x + math.cos(x), 1.5, 0.9, 1.1)
    assert w.item() == pytest.approx(expected, abs=1e-12)


def test_momentum_correction_reports_large_changes_and_scales_small_ones():
    w = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    w.grad = torch.ones(2)
    optimizer.step()
    assert MomentumCorrection(1.1).apply(optimizer, 0.1, 0.01) is True
    assert optimizer.state[w]["momentum_buffer"].tolist() == [1.0, 1.0]
    assert MomentumCorrection(1.1).apply(optimizer, 0.1, 0.105) is False
    assert optimizer.state[w]["momentum_buffer"] == pytest.approx(torch.full((2,), 0.1 / 0.105))


def test_lr_change_log_fires_only_on_relative_change_above_threshold():
    log = LRChangeLog(threshold=0.1)
    lrs = [0.01, 0.0105, 0.0109, 0.0111, 0.0112, 0.00112, 0.00112]
    assert [log.changed(lr) for lr in lrs] == [True, False, False, True, False, True, False]
