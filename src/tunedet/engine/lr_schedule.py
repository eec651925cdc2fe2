"""Learning-rate schedules: a warmup times a main policy, pure functions of the iteration.

``lr(it) = base_lr · warmup.factor(it) · policy.factor(it)``. Nothing is
stepped and nothing is stored: resuming needs only the iteration number, and any
policy can be plotted by evaluating ``factor`` on a range of iterations.

Main policies (``lr_policy`` registry) receive ``max_iters`` from the builder;
warmups (``warmup`` registry) return 1 at and after ``iters``, except ``gradual``,
which ends at its ``multiplier`` and hands over to the main policy: the policy's
clock starts at the end of that warmup (``policy_offset``). A policy may also
define ``momentum(it)`` (one-cycle); the schedule then sets the optimizer's
momentum (or Adam's beta1) as well.
"""

import bisect
import math
from typing import Annotated, Any, Literal

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


@register("warmup", "gradual")
class GradualWarmup:
    """Gradual warmup with a multiplier (Goyal et al. 2017; ildoonet's GradualWarmupScheduler).

    The factor goes linearly from 1 to ``multiplier`` over ``iters`` (from 0 to 1 when
    ``multiplier == 1``) and stays at ``multiplier`` after: the main policy then runs on
    ``base_lr·multiplier`` with its clock starting at ``iters`` (``policy_offset``).
    """

    def __init__(
        self, iters: NonNegativeInt = 500, multiplier: Annotated[float, Field(ge=1)] = 1.0
    ):
        if multiplier < 1:
            raise ValueError(f"gradual warmup: multiplier must be >= 1, got {multiplier}")
        self.iters = iters
        self.multiplier = multiplier
        self.policy_offset = iters

    def factor(self, it: int) -> float:
        if it >= self.iters:
            return self.multiplier
        if self.multiplier == 1:
            return it / self.iters
        return 1.0 + (self.multiplier - 1.0) * it / self.iters


# --------------------------------------------------------------------- schedule


class LRSchedule:
    """``lr_at(it) = base_lr · warmup.factor(it) · policy.factor(it - offset)``; holds no state.

    ``offset`` is the warmup's ``policy_offset`` (0 except for ``gradual``), clamped so the
    policy sees iteration 0 during such a warmup.
    """

    def __init__(self, base_lr: float, policy: Any, warmup: Any | None = None):
        self.base_lr = float(base_lr)
        self.policy = policy
        self.warmup = warmup if warmup is not None else NoWarmup()
        self.offset = int(getattr(self.warmup, "policy_offset", 0))

    def lr_at(self, it: int) -> float:
        return self.base_lr * self.warmup.factor(it) * self.policy.factor(max(0, it - self.offset))

    def momentum_at(self, it: int) -> float | None:
        """The policy's momentum at ``it`` (one-cycle), or None when it does not set one."""
        momentum = getattr(self.policy, "momentum", None)
        return momentum(max(0, it - self.offset)) if momentum is not None else None

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        """Set every param group's lr to ``lr_at(it) · group["lr_mult"]`` (default 1), and its
        momentum (or beta1) when the policy cycles momentum; returns lr_at(it)."""
        lr = self.lr_at(it)
        momentum = self.momentum_at(it)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
            if momentum is None:
                continue
            if "betas" in group:
                group["betas"] = (momentum, *tuple(group["betas"])[1:])
            elif "momentum" in group:
                group["momentum"] = momentum
        return lr


def policy_max_iters(warmup: Any, max_iters: int | None) -> int | None:
    """The main policy's length: ``max_iters`` minus a handing-over warmup's iterations."""
    offset = int(getattr(warmup, "policy_offset", 0))
    if max_iters is None or offset == 0:
        return max_iters
    return max(1, max_iters - offset)


def build_lr_schedule(
    base_lr: float, policy: Any, warmup: Any | None, max_iters: int | None
) -> LRSchedule:
    """An ``LRSchedule`` from validated ``lr_policy`` and ``warmup`` specs (``{"type": ...}``)."""
    warmup_obj = build("warmup", warmup) if warmup is not None else NoWarmup()
    policy_obj = build(
        "lr_policy", policy, max_iters=policy_max_iters(warmup_obj, max_iters), base_lr=base_lr
    )
    return LRSchedule(base_lr, policy_obj, warmup_obj)


# ------------------------------------------------------------- momentum and logging


def scale_momentum_buffers(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Multiply every SGD-style ``momentum_buffer`` of ``optimizer`` by ``factor``."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.mul_(factor)


class MomentumCorrection:
    """Detectron's SCALE_MOMENTUM, in torch's parametrisation of momentum SGD.

    Detectron (Caffe2) keeps the velocity with the lr inside, ``v = m·v + lr·g; w -= v``,
    and rescales ``v`` by ``new_lr/old_lr`` only when the lr changes by a ratio above
    ``threshold`` (a small change leaves the old lr in the velocity). torch keeps
    ``b = m·b + g; w -= lr·b``, i.e. ``v = lr·b``: the velocity is rescaled at *every*
    change. To behave as Detectron, the lr changes at or below ``threshold`` are
    un-corrected here by scaling ``b`` by ``old_lr/new_lr``; large ones are left to torch.
    Stateless: the previous lr is ``schedule.lr_at(it - 1)``.
    """

    def __init__(self, threshold: float = 1.1):
        if threshold < 1:
            raise ValueError(f"momentum correction threshold must be >= 1, got {threshold}")
        self.threshold = threshold

    def apply(self, optimizer: torch.optim.Optimizer, old_lr: float, new_lr: float) -> bool:
        """Adjust the buffers for a change ``old_lr -> new_lr``; True if the change counted
        as large (velocity scaled by ``new_lr/old_lr``, as Detectron does)."""
        if old_lr <= 1e-12 or new_lr <= 1e-12 or old_lr == new_lr:
            return False
        ratio = max(new_lr / old_lr, old_lr / new_lr)
        if ratio > self.threshold:
            return True
        scale_momentum_buffers(optimizer, old_lr / new_lr)
        return False


class LRChangeLog:
    """Decides when an lr is worth a log line: on the first call and when it differs from
    the last logged value by a relative change above ``threshold`` (Detectron logged lr
    changes by a ratio above 1.1 only)."""

    def __init__(self, threshold: float = 0.1):
        if threshold < 0:
            raise ValueError(f"lr log threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.last: float | None = None

    def changed(self, lr: float) -> bool:
        """True (and remember ``lr``) when ``lr`` should be logged."""
        if self.last is not None:
            reference = max(abs(self.last), 1e-12)
            if abs(lr - self.last) / reference <= self.threshold:
                return False
        self.last = lr
        return True
