"""A wall-time budget (``train.max_minutes`` with no ``max_iters`` or ``epochs``): the
schedule's length is planned from the measured speed, and re-planned as the run goes.

Planning once from the first 20 iterations ended runs 7–19 % before the budget: those
iterations carry one-off costs (the first batches, the allocator warming up), so the
speed was underestimated and the schedule too short. Here the speed is measured after
``WARMUP_ITERS`` iterations, and the plan is redone each time another tenth of the
budget has passed, up to ``LAST_REPLAN`` of it, from the speed over the last tenth
(periodic evaluations and checkpoints included, and a machine whose load changes is
followed). Each plan sets ``max_iters = iteration + time left / seconds per iteration``;
the LR schedule (warmup + policy) is rebuilt over it, so the cosine ends at the budget.
"""

from __future__ import annotations

WARMUP_ITERS = 5  # iterations left out of the first speed measurement
FIRST_PLAN_ITERS = 20  # the first plan, after this many iterations of the run
REPLAN_FRACTION = 0.1  # re-plan each time this share of the budget has passed
LAST_REPLAN = 0.8  # no re-plan after this share of the budget (the LR's tail stays put)


class TimeBudget:
    """Plans ``max_iters`` for ``seconds`` of training (see the module docstring)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._mark: tuple[int, float] | None = None  # (iterations done, elapsed) of the window
        self._next_replan = REPLAN_FRACTION * self.seconds
        self.plans = 0

    def plan(self, done: int, iteration: int, elapsed: float) -> int | None:
        """The new ``max_iters`` when it is time to (re-)plan, else None. ``done``:
        iterations run in this process; ``iteration``: the run's iteration (after a resume
        they differ); ``elapsed``: seconds since this process's first iteration."""
        if done == WARMUP_ITERS:
            self._mark = (done, elapsed)
        if self._mark is None or done <= self._mark[0]:
            return None
        first = self.plans == 0 and done >= FIRST_PLAN_ITERS
        later = self.plans > 0 and elapsed >= self._next_replan
        if not (first or later) or elapsed >= LAST_REPLAN * self.seconds:
            return None
        per_iter = (elapsed - self._mark[1]) / (done - self._mark[0])
        self._mark = (done, elapsed)
        self.plans += 1
        while self._next_replan <= elapsed:
            self._next_replan += REPLAN_FRACTION * self.seconds
        if per_iter <= 0:
            return None
        return iteration + max(1, int((self.seconds - elapsed) / per_iter))
