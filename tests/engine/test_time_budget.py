"""The wall-time budget plans the schedule so that training ends at the budget."""

import pytest

from tunedet.engine.time_budget import TimeBudget


def simulate(seconds, cost, planner):
    """Run iterations of ``cost(i)`` seconds until ``max_iters`` or the budget; returns
    (iterations run, elapsed seconds when the loop stopped, final max_iters)."""
    max_iters, elapsed, iteration = 10**9, 0.0, 0
    while iteration < max_iters and elapsed < seconds:
        planned = planner(iteration, elapsed)
        if planned is not None:
            max_iters = planned
        elapsed += cost(iteration)
        iteration += 1
    return iteration, elapsed, max_iters


def plan_once_at_20(seconds):
    """The former rule: one plan from the first 20 iterations' mean speed."""

    def planner(iteration, elapsed):
        if iteration == 20:
            return iteration + int((seconds - elapsed) / (elapsed / 20))
        return None

    return planner


def with_time_budget(seconds):
    budget = TimeBudget(seconds)
    return lambda iteration, elapsed: budget.plan(iteration, iteration, elapsed)


def slow_start(i):
    return 1.0 if i < 5 else 0.1


def test_slow_first_iterations_no_longer_end_the_run_early():
    iters, elapsed, _ = simulate(60, slow_start, plan_once_at_20(60))
    assert elapsed < 0.8 * 60  # the old plan: the schedule ended well before the budget
    iters, elapsed, max_iters = simulate(60, slow_start, with_time_budget(60))
    assert iters == max_iters  # the schedule ran to its end ...
    assert elapsed == pytest.approx(60, rel=0.02)  # ... at the budget


def test_a_machine_that_slows_down_is_followed_by_the_re_plans():
    def cost(i):
        return 0.1 if i < 150 else 0.2

    iters, elapsed, max_iters = simulate(60, cost, with_time_budget(60))
    # planned at 0.1 s per iteration; the re-plans shrink the schedule to what fits
    assert max_iters < 500
    assert elapsed == pytest.approx(60, rel=0.05)
    assert iters >= 0.95 * max_iters


def test_no_plan_before_the_speed_is_measured_nor_after_most_of_the_budget():
    budget = TimeBudget(10)
    assert [budget.plan(done, done, 0.1 * done) for done in range(20)] == [None] * 20
    assert budget.plan(20, 20, 2.0) == 20 + 80
    late = TimeBudget(10)
    late.plan(5, 5, 0.5)
    assert late.plan(20, 20, 9.0) is None  # past 80 % of the budget: the LR's tail stays


def test_a_resumed_run_plans_from_its_own_iteration():
    budget = TimeBudget(10)
    budget.plan(5, 105, 0.5)
    assert budget.plan(20, 120, 2.0) == 120 + 80
