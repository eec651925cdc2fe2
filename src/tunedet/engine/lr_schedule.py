"""Learning-rate schedules: a warmup times a main policy, pure functions of the iteration.

``lr(it) = base_lr · warmup.factor(it) · policy.factor(it)`` (SPEC S2). Nothing is
stepped and nothing is stored: resuming needs only the iteration number, and any
policy can be plotted by evaluating ``factor`` on a range of iterations.

Main policies (``lr_policy`` registry) receive ``max_iters`` from the builder;
warmups (``warmup`` registry) return 1 at and after ``iters``.
"""

import bisect
import math
from typing import Annotated, Any

import torch
from pydantic import Field

from tunedet.config.registry import build, register

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
WarmupFactor = Annotated[float, Field(gt=0, le=1)]


def _check_steps(steps: tuple[int, ...], what: str) -> tuple[int, ...]:
    steps = tuple(int(s) for s in steps)
    if any(s < 0 for s in steps):
        raise ValueError(f"{what}: steps must be >= 0, got {list(steps)}")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"{what}: steps must be strictly increasing, got {list(steps)}")
    return steps


# ---------------------------------------------------------------- main policies


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
    """Detectron's steps_with_decay: gamma^k, k = number of milestones <= it."""

    def __init__(
        self,
        steps: tuple[int, ...],
        gamma: Annotated[float, Field(gt=0)] = 0.1,
        max_iters: int | None = None,
    ):
        self.steps = _check_steps(steps, "multistep")
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
        decay_steps = decay_steps if decay_steps is not None else max_iters
        if decay_steps is None or decay_steps <= 0:
            raise ValueError(f"cosine: decay_steps (or max_iters) must be > 0, got {decay_steps}")
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
        decay_steps = decay_steps if decay_steps is not None else max_iters
        if decay_steps is None or decay_steps <= 0:
            raise ValueError(f"poly: decay_steps (or max_iters) must be > 0, got {decay_steps}")
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
        decay_steps = decay_steps if decay_steps is not None else max_iters
        if decay_steps is None or decay_steps <= 0:
            raise ValueError(f"exp: decay_steps (or max_iters) must be > 0, got {decay_steps}")
        self.decay_rate = decay_rate
        self.decay_steps = decay_steps
        self.staircase = staircase
        self.max_iters = max_iters

    def factor(self, it: int) -> float:
        exponent = it / self.decay_steps
        if self.staircase:
            exponent = math.floor(exponent)
        return self.decay_rate**exponent


# ---------------------------------------------------------------------- warmups


@register("warmup", "none")
class NoWarmup:
    """No warmup: factor 1 from the first iteration."""

    iters = 0

    def factor(self, it: int) -> float:
        return 1.0


@register("warmup", "constant")
class ConstantWarmup:
    """Constant warmup: lr·factor while it < iters, then the full lr."""

    def __init__(self, iters: NonNegativeInt = 500, factor: WarmupFactor = 1 / 3):
        self.iters = iters
        self.start_factor = factor

    def factor(self, it: int) -> float:
        return self.start_factor if it < self.iters else 1.0


@register("warmup", "linear")
class LinearWarmup:
    """Linear warmup (Detectron form): factor + (1 - factor)·it/iters while it < iters."""

    def __init__(self, iters: NonNegativeInt = 500, factor: WarmupFactor = 1 / 3):
        self.iters = iters
        self.start_factor = factor

    def factor(self, it: int) -> float:
        if it >= self.iters:
            return 1.0
        return self.start_factor + (1.0 - self.start_factor) * it / self.iters


@register("warmup", "exp")
class ExpWarmup:
    """Exponential warmup: factor^(1 - it/iters) while it < iters (geometric ramp to 1)."""

    def __init__(self, iters: NonNegativeInt = 500, factor: WarmupFactor = 1 / 3):
        self.iters = iters
        self.start_factor = factor

    def factor(self, it: int) -> float:
        if it >= self.iters:
            return 1.0
        return self.start_factor ** (1.0 - it / self.iters)


# --------------------------------------------------------------------- schedule


class LRSchedule:
    """``lr_at(it) = base_lr · warmup.factor(it) · policy.factor(it)``; holds no state."""

    def __init__(self, base_lr: float, policy: Any, warmup: Any | None = None):
        self.base_lr = float(base_lr)
        self.policy = policy
        self.warmup = warmup if warmup is not None else NoWarmup()

    def lr_at(self, it: int) -> float:
        return self.base_lr * self.warmup.factor(it) * self.policy.factor(it)

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        """Set every param group's lr to ``lr_at(it) · group["lr_mult"]`` (default 1); returns lr_at(it)."""
        lr = self.lr_at(it)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr


def build_lr_schedule(
    base_lr: float, policy: Any, warmup: Any | None, max_iters: int | None
) -> LRSchedule:
    """An ``LRSchedule`` from validated ``lr_policy`` and ``warmup`` specs (``{"type": ...}``)."""
    policy_obj = build("lr_policy", policy, max_iters=max_iters, base_lr=base_lr)
    warmup_obj = build("warmup", warmup) if warmup is not None else NoWarmup()
    return LRSchedule(base_lr, policy_obj, warmup_obj)
