"""The main LR policies (``lr_policy`` registry): ``factor(it)`` multiplies the base LR.

Each receives ``max_iters`` (the length of the policy's part of the run) from the
builder and is a pure function of the iteration: ``constant``, ``step``, ``multistep``
(and Detectron's ``steps_with_lrs``), ``cosine`` (Loshchilov & Hutter 2017, with a
floor ``alpha``), ``poly``, ``exp``, ``cosine_restarts`` (SGDR) and ``onecycle``
(Smith 2018, which also defines ``momentum(it)``). ``engine/lr_schedule.py`` multiplies
a policy with a warmup.
"""

import bisect
import math
from typing import Annotated, Literal

from pydantic import Field

from tunedet.config.registry import register

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


def _check_steps(steps: tuple[int, ...], what: str) -> tuple[int, ...]:
    steps = tuple(int(s) for s in steps)
    if any(s < 0 for s in steps):
        raise ValueError(f"{what}: steps must be >= 0, got {list(steps)}")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"{what}: steps must be strictly increasing, got {list(steps)}")
    return steps


# ---------------------------------------------------------------- main policies


def resolve_decay_steps(policy: str, decay_steps: int | None, max_iters: int | None) -> int:
    """``decay_steps``, defaulting to the run's ``max_iters``; must be > 0."""
    steps = decay_steps if decay_steps is not None else max_iters
    if steps is None or steps <= 0:
        raise ValueError(f"{policy}: decay_steps (or max_iters) must be > 0, got {steps}")
    return steps


@register("lr_policy", "constant", injected=("max_iters",))
class ConstantLR:
    """Constant: factor 1 at every iteration."""

    def __init__(self, max_iters: int | None = None):
        self.max_iters = max_iters

    def factor(self, it: int) -> float:
        return 1.0


@register("lr_policy", "step", injected=("max_iters",))
class StepLR:
    """Step decay: gamma^(it // step_size)."""

    def __init__(
        self,
        step_size: PositiveInt,
        gamma: Annotated[float, Field(gt=0)] = 0.1,
        max_iters: int | None = None,
    ):
        if step_size <= 0:
            raise ValueError(f"step: step_size must be > 0, got {step_size}")
        self.step_size = step_size
        self.gamma = gamma
        self.max_iters = max_iters

    def factor(self, it: int) -> float:
        return self.gamma ** (it // self.step_size)


@register("lr_policy", "multistep", injected=("max_iters",))
class MultiStepLR:
    """Detectron's steps_with_decay: gamma^k, k = number of milestones <= it.

    A leading 0 is the start of the first interval, not a milestone, as in Detectron
    (``STEPS: [0, 60000, 80000]``: the base lr until 60000, then ×0.1, then ×0.01).
    """

    def __init__(
        self,
        steps: tuple[int, ...],
        gamma: Annotated[float, Field(gt=0)] = 0.1,
        max_iters: int | None = None,
    ):
        steps = _check_steps(steps, "multistep")
        self.steps = steps[1:] if steps and steps[0] == 0 else steps
        self.gamma = gamma
        self.max_iters = max_iters

    def factor(self, it: int) -> float:
        return self.gamma ** bisect.bisect_right(self.steps, it)


@register("lr_policy", "steps_with_lrs", injected=("max_iters", "base_lr"))
class StepsWithLRs:
    """Detectron's steps_with_lrs: lr = lrs[k], k = number of milestones <= it.

    ``steps`` starts at 0 (as in Detectron) or is implied to: ``lrs[0]`` is used before
    the first milestone when ``len(lrs) == len(steps) + 1``.
    """

    def __init__(
        self,
        steps: tuple[int, ...],
        lrs: tuple[Annotated[float, Field(ge=0)], ...],
        max_iters: int | None = None,
        base_lr: float = 1.0,
    ):
        steps = _check_steps(steps, "steps_with_lrs")
        if len(lrs) == len(steps) and steps and steps[0] == 0:
            steps = steps[1:]
        if len(lrs) != len(steps) + 1:
            raise ValueError(
                f"steps_with_lrs: need one lr per interval: {len(steps)} milestones after 0 "
                f"need {len(steps) + 1} lrs, got {len(lrs)}"
            )
        if base_lr <= 0:
            raise ValueError(f"steps_with_lrs: base_lr must be > 0, got {base_lr}")
        self.steps = steps
        self.lrs = tuple(float(lr) for lr in lrs)
        self.base_lr = base_lr
        self.max_iters = max_iters

    def factor(self, it: int) -> float:
        return self.lrs[bisect.bisect_right(self.steps, it)] / self.base_lr


@register("lr_policy", "cosine", injected=("max_iters",))
class CosineLR:
    """Cosine decay to a floor: (1 - alpha)·0.5(1 + cos(π t / decay_steps)) + alpha.

    ``t = min(it, decay_steps)``; ``alpha`` is the floor as a fraction of the base lr;
    ``decay_steps`` defaults to the run's ``max_iters``.
    """

    def __init__(
        self,
        alpha: Fraction = 0.0,
        decay_steps: PositiveInt | None = None,
        max_iters: int | None = None,
    ):
        decay_steps = resolve_decay_steps("cosine", decay_steps, max_iters)
        self.alpha = alpha
        self.decay_steps = decay_steps
        self.max_iters = max_iters

    def factor(self, it: int) -> float:
        t = min(it, self.decay_steps)
        c = 0.5 * (1.0 + math.cos(math.pi * t / self.decay_steps))
        return (1.0 - self.alpha) * c + self.alpha


@register("lr_policy", "poly", injected=("max_iters",))
class PolyLR:
    """Polynomial decay: (1 - end_factor)(1 - t/decay_steps)^power + end_factor.

    ``t = min(it, decay_steps)``; ``end_factor`` is the final lr as a fraction of the base.
    With ``cycle`` the decay restarts: decay_steps becomes decay_steps·ceil(it/decay_steps).
    """

    def __init__(
        self,
        power: Annotated[float, Field(gt=0)] = 0.9,
        end_factor: Fraction = 0.0,
        decay_steps: PositiveInt | None = None,
        cycle: bool = False,
        max_iters: int | None = None,
    ):
        decay_steps = resolve_decay_steps("poly", decay_steps, max_iters)
        self.power = power
        self.end_factor = end_factor
        self.decay_steps = decay_steps
        self.cycle = cycle
        self.max_iters = max_iters

    def factor(self, it: int) -> float:
        if self.cycle:
            span = self.decay_steps * max(1, math.ceil(it / self.decay_steps))
            t = it
        else:
            span = self.decay_steps
            t = min(it, self.decay_steps)
        return (1.0 - self.end_factor) * (1.0 - t / span) ** self.power + self.end_factor


@register("lr_policy", "exp", injected=("max_iters",))
class ExpLR:
    """Exponential decay: decay_rate^(it / decay_steps), floored exponent with ``staircase``."""

    def __init__(
        self,
        decay_rate: Annotated[float, Field(gt=0)] = 0.1,
        decay_steps: PositiveInt | None = None,
        staircase: bool = False,
        max_iters: int | None = None,
    ):
        decay_steps = resolve_decay_steps("exp", decay_steps, max_iters)
        self.decay_rate = decay_rate
        self.decay_steps = decay_steps
        self.staircase = staircase
        self.max_iters = max_iters

    def factor(self, it: int) -> float:
        exponent = it / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.decay_rate**exponent


@register("lr_policy", "cosine_restarts", injected=("max_iters",))
class CosineRestartsLR:
    """Cosine with warm restarts (SGDR, Loshchilov & Hutter 2017).

    Cycle ``i`` lasts ``period·period_mult^i`` iterations; inside it, at position ``t`` of
    length ``L``, the factor is ``restart_decay^i·((1 - alpha)·0.5(1 + cos(π t/L)) + alpha)``.
    ``period`` defaults to the run's ``max_iters`` (one cycle: plain cosine).
    """

    def __init__(
        self,
        period: PositiveInt | None = None,
        period_mult: Annotated[float, Field(ge=1)] = 1.0,
        restart_decay: Annotated[float, Field(gt=0, le=1)] = 1.0,
        alpha: Fraction = 0.0,
        max_iters: int | None = None,
    ):
        period = period if period is not None else max_iters
        if period is None or period <= 0:
            raise ValueError(f"cosine_restarts: period (or max_iters) must be > 0, got {period}")
        if period_mult < 1:
            raise ValueError(f"cosine_restarts: period_mult must be >= 1, got {period_mult}")
        self.period = period
        self.period_mult = period_mult
        self.restart_decay = restart_decay
        self.alpha = alpha
        self.max_iters = max_iters

    def cycle(self, it: int) -> tuple[int, float, float]:
        """``(cycle index, position in the cycle, cycle length)`` of iteration ``it``."""
        if self.period_mult == 1:
            index, t = divmod(it, self.period)
            return index, float(t), float(self.period)
        index, start, length = 0, 0.0, float(self.period)
        while it >= start + length:
            start, length, index = start + length, length * self.period_mult, index + 1
        return index, it - start, length

    def factor(self, it: int) -> float:
        index, t, length = self.cycle(it)
        c = 0.5 * (1.0 + math.cos(math.pi * t / length))
        return self.restart_decay**index * ((1.0 - self.alpha) * c + self.alpha)


@register("lr_policy", "onecycle", injected=("max_iters",))
class OneCycleLR:
    """One-cycle (Smith 2018): lr up to base then far down, momentum the opposite way.

    The lr rises from ``base/div_factor`` to ``base`` and falls to
    ``base/(div_factor·final_div_factor)``. The rise lasts ``pct_start·total_iters`` iterations, the fall the rest, each annealed
    by ``anneal`` (cosine or linear). ``total_iters`` defaults to ``max_iters``. With
    ``cycle_momentum`` the momentum (SGD) or beta1 (Adam family) goes from
    ``max_momentum`` down to ``base_momentum`` at the peak lr and back up.
    """

    def __init__(
        self,
        pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.3,
        div_factor: Annotated[float, Field(ge=1)] = 25.0,
        final_div_factor: Annotated[float, Field(ge=1)] = 1e4,
        anneal: Literal["cos", "linear"] = "cos",
        cycle_momentum: bool = True,
        base_momentum: Fraction = 0.85,
        max_momentum: Fraction = 0.95,
        total_iters: PositiveInt | None = None,
        max_iters: int | None = None,
    ):
        total_iters = total_iters if total_iters is not None else max_iters
        if total_iters is None or total_iters <= 1:
            raise ValueError(f"onecycle: total_iters (or max_iters) must be > 1, got {total_iters}")
        if not 0 < pct_start < 1:
            raise ValueError(f"onecycle: pct_start must lie in (0, 1), got {pct_start}")
        self.pct_start = pct_start
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.anneal = anneal
        self.cycle_momentum = cycle_momentum
        self.base_momentum = base_momentum
        self.max_momentum = max_momentum
        self.total_iters = total_iters
        self.max_iters = max_iters
        self.peak_iter = max(1, round(pct_start * total_iters))

    def _interp(self, start: float, end: float, frac: float) -> float:
        frac = min(max(frac, 0.0), 1.0)
        if self.anneal == "cos":
            return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))
        return start + (end - start) * frac

    def _phase(self, it: int) -> tuple[bool, float]:
        if it < self.peak_iter:
            return True, it / self.peak_iter
        return False, (it - self.peak_iter) / (self.total_iters - self.peak_iter)

    def factor(self, it: int) -> float:
        initial = 1.0 / self.div_factor
        rising, frac = self._phase(it)
        if rising:
            return self._interp(initial, 1.0, frac)
        return self._interp(1.0, initial / self.final_div_factor, frac)

    def momentum(self, it: int) -> float | None:
        if not self.cycle_momentum:
            return None
        rising, frac = self._phase(it)
        if rising:
            return self._interp(self.max_momentum, self.base_momentum, frac)
        return self._interp(self.base_momentum, self.max_momentum, frac)
