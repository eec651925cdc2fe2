"""AdaBound / AMSBound (Luo et al. 2019), registered as optimizer ``adabound``."""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Field

from tunedet.config.registry import register
from tunedet.engine.optim import (
    COMMON_INJECTED,
    Beta,
    Decay,
    Epsilon,
    LearningRate,
    Multipliers,
    PositiveInt,
    setup_param_groups,
)


class AdaBound(torch.optim.Optimizer):
    """AdaBound / AMSBound (Luo et al. 2019): Adam whose per-coordinate step size is
    clipped into ``[lower(t), upper(t)]``, bounds that both converge to ``final_lr``:

        lower(t) = final_lr · (1 − 1/(γ·t + 1)),   upper(t) = final_lr · (1 + 1/(γ·t))

    so the method moves from Adam towards SGD with lr ``final_lr``. As in the paper's
    code, ``final_lr`` is scaled by ``lr / base_lr`` (``base_lr``: the group's lr at
    construction), so lr schedules and warmup move the bounds too. The step is
    ``w -= clip(lr·sqrt(1 − β2^t)/(1 − β1^t) / (sqrt(v) + eps), lower, upper) · m``;
    weight decay is L2 (added to the gradient). ``amsbound`` uses the running max of ``v``.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsbound: bool = False,
    ):
        if lr <= 0 or final_lr <= 0 or gamma <= 0 or eps <= 0:
            raise ValueError("AdaBound: lr, final_lr, gamma and eps must be > 0")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdaBound: betas must lie in [0, 1), got {betas}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "final_lr": final_lr,
            "gamma": gamma,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsbound": amsbound,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("base_lr", group["lr"])

    @staticmethod
    def bounds(final_lr: float, gamma: float, step: int) -> tuple[float, float]:
        """``(lower(t), upper(t))`` for step ``t >= 1`` and an (already scaled) ``final_lr``."""
        return (
            final_lr * (1.0 - 1.0 / (gamma * step + 1.0)),
            final_lr * (1.0 + 1.0 / (gamma * step)),
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            final_lr = group["final_lr"] * group["lr"] / group["base_lr"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    raise RuntimeError("AdaBound does not support sparse gradients")
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                    if group["amsbound"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = int(state["step"].item())
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["amsbound"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                else:
                    second = exp_avg_sq
                denom = second.sqrt().add_(group["eps"])
                step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                lower, upper = self.bounds(final_lr, group["gamma"], step)
                rate = torch.full_like(denom, step_size).div_(denom).clamp_(lower, upper)
                param.sub_(rate.mul_(exp_avg))
        return loss


@register("optimizer", "adabound", injected=COMMON_INJECTED)
def adabound(
    params: Any,
    lr: LearningRate = 1e-3,
    betas: tuple[Beta, Beta] = (0.9, 0.999),
    final_lr: LearningRate = 0.1,
    gamma: Annotated[float, Field(gt=0)] = 1e-3,
    eps: Epsilon = 1e-8,
    amsbound: bool = False,
    weight_decay: Decay = 0.0,
    norm_decay: Decay = 0.0,
    bias_decay: Decay = 0.0,
    param_multipliers: Multipliers | None = None,
    l1: Decay = 0.0,
    auto_scale_lr: bool = False,
    base_batch: PositiveInt = 16,
    batch_size: int | None = None,
) -> AdaBound:
    """AdaBound (Luo et al. 2019): Adam with step sizes clipped into bounds → final_lr.

    ``amsbound`` selects the AMSGrad variant (running max of the second moment).
    """
    groups, lr = setup_param_groups(
        params, lr, weight_decay, norm_decay, bias_decay, param_multipliers, l1,
        auto_scale_lr, base_batch, batch_size,
    )  # fmt: skip
    return AdaBound(
        groups,
        lr=lr,
        betas=tuple(betas),
        final_lr=final_lr,
        gamma=gamma,
        eps=eps,
        weight_decay=weight_decay,
        amsbound=amsbound,
    )
