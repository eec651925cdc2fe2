"""Learning-rate schedules: a warmup times a main policy, pure functions of the iteration.

``lr(it) = base_lr · warmup.factor(it) · policy.factor(it)``. Nothing is
stepped and nothing is stored: resuming needs only the iteration number, and any
policy can be plotted by evaluating ``factor`` on a range of iterations.

Main policies (``lr_policy`` registry, ``engine/lr_policies.py``) receive ``max_iters`` from the builder;
warmups (``warmup`` registry) return 1 at and after ``iters``, except ``gradual``,
which ends at its ``multiplier`` and hands over to the main policy: the policy's
clock starts at the end of that warmup (``policy_offset``). A policy may also
define ``momentum(it)`` (one-cycle); the schedule then sets the optimizer's
momentum (or Adam's beta1) as well.
"""

from typing import Annotated, Any

import torch
from pydantic import Field

from tunedet.config.registry import build, register

# the main policies, in their own module (importing it registers them)
from tunedet.engine.lr_policies import NonNegativeInt

WarmupFactor = Annotated[float, Field(gt=0, le=1)]


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
