"""Optimizers with parameter groups, gradient clipping, the L1 penalty and the linear
scaling rule.

Weight decay is L2 in the optimizer, applied per group: ordinary weights
get ``weight_decay``, normalisation layers' weights and biases get ``norm_decay`` and
other biases ``bias_decay`` (both 0 by default, as in Detectron and mmdetection).
``param_multipliers`` scales the lr and the decay of the parameters under a module
name prefix (mmdetection's ``paramwise_cfg``): ``{backbone: {lr: 0.1}}`` trains the
backbone at a tenth of the lr; the longest matching prefix wins.

Each registered optimizer takes ``params`` from the builder: either a model (the
groups are formed here from the decay settings) or ready param groups/tensors,
which are used as given. ``batch_size`` (the effective batch: batch · accumulate)
is injected too; with ``auto_scale_lr`` the lr follows the linear scaling rule
(Goyal et al. 2017): ``lr · batch_size / base_batch``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from tunedet.config.registry import build, register

LearningRate = Annotated[float, Field(gt=0)]
Decay = Annotated[float, Field(ge=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]
Epsilon = Annotated[float, Field(gt=0)]
Multipliers = dict[str, dict[Literal["lr", "decay"], Annotated[float, Field(ge=0)]]]
PositiveInt = Annotated[int, Field(ge=1)]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _matching_prefix(name: str, prefixes: Iterable[str]) -> str | None:
    """The longest prefix that is ``name`` or a dotted ancestor of it."""
    best = None
    for prefix in prefixes:
        if (name == prefix or name.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    return best


def param_groups(
    model: nn.Module,
    weight_decay: float,
    norm_decay: float = 0.0,
    bias_decay: float = 0.0,
    multipliers: Multipliers | None = None,
    l1: float = 0.0,
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into decay / norm / bias groups.

    Returns groups ``{"params": [...], "weight_decay": float, "name": str, "lr_mult":
    float, "l1": float}`` named ``"decay"``, ``"norm"`` (weights and biases of norm
    layers) and ``"bias"`` (biases of other layers), each split further by the module
    prefixes of ``multipliers`` (``"backbone/decay"`` ...): their ``lr_mult`` is the
    prefix's ``lr`` and their weight decay is multiplied by its ``decay``. ``l1`` is set
    on the decay groups only (norm and bias parameters get no penalty). Empty groups are
    dropped; parameters with ``requires_grad=False`` are skipped, shared ones appear once.
    A prefix that matches no trainable parameter is an error (a typo, most likely).
    """
    multipliers = dict(multipliers or {})
    base = {"decay": weight_decay, "norm": norm_decay, "bias": bias_decay}
    buckets: dict[tuple[str | None, str], list[nn.Parameter]] = {}
    seen: set[int] = set()
    used: set[str] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            kind = "norm" if is_norm else "bias" if name == "bias" else "decay"
            full_name = f"{module_name}.{name}" if module_name else name
            prefix = _matching_prefix(full_name, multipliers)
            if prefix is not None:
                used.add(prefix)
            buckets.setdefault((prefix, kind), []).append(param)
    unused = sorted(set(multipliers) - used)
    if unused:
        raise ValueError(
            f"param_multipliers: no trainable parameter under {', '.join(map(repr, unused))}"
        )
    groups = []
    for prefix in [None, *multipliers]:
        mult = multipliers.get(prefix, {}) if prefix is not None else {}
        for kind in ("decay", "norm", "bias"):
            params = buckets.get((prefix, kind))
            if not params:
                continue
            groups.append(
                {
                    "params": params,
                    "weight_decay": base[kind] * mult.get("decay", 1.0),
                    "name": kind if prefix is None else f"{prefix}/{kind}",
                    "lr_mult": mult.get("lr", 1.0),
                    "l1": l1 if kind == "decay" else 0.0,
                }
            )
    return groups


def linear_scaled_lr(lr: float, batch_size: int | None, base_batch: int) -> float:
    """The linear scaling rule: ``lr · batch_size / base_batch`` (``lr`` when batch unknown)."""
    return lr if batch_size is None else lr * batch_size / base_batch


def _setup(
    params: Any,
    lr: float,
    weight_decay: float,
    norm_decay: float,
    bias_decay: float,
    param_multipliers: Multipliers | None,
    l1: float,
    auto_scale_lr: bool,
    base_batch: int,
    batch_size: int | None,
) -> tuple[Any, float]:
    """Param groups (with each group's initial lr) and the (scaled) base lr."""
    if auto_scale_lr:
        lr = linear_scaled_lr(lr, batch_size, base_batch)
    if not isinstance(params, nn.Module):
        return params, lr
    groups = param_groups(params, weight_decay, norm_decay, bias_decay, param_multipliers, l1)
    for group in groups:
        group["lr"] = lr * group["lr_mult"]
    return groups, lr


def apply_l1_penalty(optimizer: torch.optim.Optimizer) -> None:
    """Add the L1 penalty's gradient ``l1 · sign(w)`` to each group with ``"l1" > 0``
    (the subgradient of ``l1 · Σ|w|``; call after backward, before ``step``)."""
    for group in optimizer.param_groups:
        l1 = group.get("l1", 0.0)
        if not l1:
            continue
        for param in group["params"]:
            if param.grad is not None:
                param.grad.add_(torch.sign(param.detach()), alpha=l1)


COMMON_INJECTED = ("params", "batch_size")


@register("optimizer", "sgd", injected=COMMON_INJECTED)
def sgd(
    params: Any,
    lr: LearningRate = 0.01,
    momentum: Decay = 0.9,
    nesterov: bool = False,
    weight_decay: Decay = 1e-4,
    norm_decay: Decay = 0.0,
    bias_decay: Decay = 0.0,
    param_multipliers: Multipliers | None = None,
    l1: Decay = 0.0,
    auto_scale_lr: bool = False,
    base_batch: PositiveInt = 16,
    batch_size: int | None = None,
) -> torch.optim.SGD:
    """SGD with momentum (and Nesterov), L2 weight decay per parameter group."""
    groups, lr = _setup(
        params, lr, weight_decay, norm_decay, bias_decay, param_multipliers, l1,
        auto_scale_lr, base_batch, batch_size,
    )  # fmt: skip
    return torch.optim.SGD(
        groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


@register("optimizer", "adamw", injected=COMMON_INJECTED)
def adamw(
    params: Any,
    lr: LearningRate = 1e-3,
    betas: tuple[Beta, Beta] = (0.9, 0.999),
    eps: Epsilon = 1e-8,
    weight_decay: Decay = 0.05,
    norm_decay: Decay = 0.0,
    bias_decay: Decay = 0.0,
    param_multipliers: Multipliers | None = None,
    l1: Decay = 0.0,
    auto_scale_lr: bool = False,
    base_batch: PositiveInt = 16,
    batch_size: int | None = None,
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter): decoupled weight decay per parameter group."""
    groups, lr = _setup(
        params, lr, weight_decay, norm_decay, bias_decay, param_multipliers, l1,
        auto_scale_lr, base_batch, batch_size,
    )  # fmt: skip
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@register("optimizer", "adam", injected=COMMON_INJECTED)
def adam(
    params: Any,
    lr: LearningRate = 1e-3,
    betas: tuple[Beta, Beta] = (0.9, 0.999),
    eps: Epsilon = 1e-8,
    weight_decay: Decay = 0.0,
    norm_decay: Decay = 0.0,
    bias_decay: Decay = 0.0,
    param_multipliers: Multipliers | None = None,
    l1: Decay = 0.0,
    auto_scale_lr: bool = False,
    base_batch: PositiveInt = 16,
    batch_size: int | None = None,
) -> torch.optim.Adam:
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient."""
    groups, lr = _setup(
        params, lr, weight_decay, norm_decay, bias_decay, param_multipliers, l1,
        auto_scale_lr, base_batch, batch_size,
    )  # fmt: skip
    return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@register("optimizer", "adagrad", injected=COMMON_INJECTED)
def adagrad(
    params: Any,
    lr: LearningRate = 0.01,
    lr_decay: Decay = 0.0,
    initial_accumulator_value: Decay = 0.0,
    eps: Epsilon = 1e-10,
    weight_decay: Decay = 0.0,
    norm_decay: Decay = 0.0,
    bias_decay: Decay = 0.0,
    param_multipliers: Multipliers | None = None,
    l1: Decay = 0.0,
    auto_scale_lr: bool = False,
    base_batch: PositiveInt = 16,
    batch_size: int | None = None,
) -> torch.optim.Adagrad:
    """AdaGrad (Duchi et al. 2011): lr / (sqrt(Σ g²) + eps) per coordinate, L2 decay."""
    groups, lr = _setup(
        params, lr, weight_decay, norm_decay, bias_decay, param_multipliers, l1,
        auto_scale_lr, base_batch, batch_size,
    )  # fmt: skip
    return torch.optim.Adagrad(
        groups,
        lr=lr,
        lr_decay=lr_decay,
        initial_accumulator_value=initial_accumulator_value,
        eps=eps,
        weight_decay=weight_decay,
    )


@register("optimizer", "rmsprop", injected=COMMON_INJECTED)
def rmsprop(
    params: Any,
    lr: LearningRate = 0.01,
    alpha: Beta = 0.99,
    eps: Epsilon = 1e-8,
    momentum: Decay = 0.0,
    centered: bool = False,
    weight_decay: Decay = 0.0,
    norm_decay: Decay = 0.0,
    bias_decay: Decay = 0.0,
    param_multipliers: Multipliers | None = None,
    l1: Decay = 0.0,
    auto_scale_lr: bool = False,
    base_batch: PositiveInt = 16,
    batch_size: int | None = None,
) -> torch.optim.RMSprop:
    """RMSProp (Hinton): lr · g / (sqrt(EMA of g²) + eps), optional momentum and centring."""
    groups, lr = _setup(
        params, lr, weight_decay, norm_decay, bias_decay, param_multipliers, l1,
        auto_scale_lr, base_batch, batch_size,
    )  # fmt: skip
    return torch.optim.RMSprop(
        groups,
        lr=lr,
        alpha=alpha,
        eps=eps,
        momentum=momentum,
        centered=centered,
        weight_decay=weight_decay,
    )


@register("optimizer", "adadelta", injected=COMMON_INJECTED)
def adadelta(
    params: Any,
    lr: LearningRate = 1.0,
    rho: Beta = 0.9,
    eps: Epsilon = 1e-6,
    weight_decay: Decay = 0.0,
    norm_decay: Decay = 0.0,
    bias_decay: Decay = 0.0,
    param_multipliers: Multipliers | None = None,
    l1: Decay = 0.0,
    auto_scale_lr: bool = False,
    base_batch: PositiveInt = 16,
    batch_size: int | None = None,
) -> torch.optim.Adadelta:
    """Adadelta (Zeiler 2012): Δw = −lr · sqrt(E[Δw²] + eps) / sqrt(E[g²] + eps) · g.

    Both running averages decay with ``rho``; ``lr`` only scales the step (1.0 in the paper).
    """
    groups, lr = _setup(
        params, lr, weight_decay, norm_decay, bias_decay, param_multipliers, l1,
        auto_scale_lr, base_batch, batch_size,
    )  # fmt: skip
    return torch.optim.Adadelta(groups, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)


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
    groups, lr = _setup(
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


def build_optimizer(
    model: nn.Module, spec: Any, batch_size: int | None = None
) -> torch.optim.Optimizer:
    """The optimizer of a validated ``optimizer`` spec (``{"type": "sgd", "lr": ..., ...}``)
    over ``model``'s trainable parameters, grouped by ``weight_decay``/``norm_decay``/
    ``bias_decay`` and ``param_multipliers``. ``batch_size`` (the effective batch) is used
    by ``auto_scale_lr``; the optimizer's ``defaults["lr"]`` is the resulting base lr."""
    return build("optimizer", spec, params=model, batch_size=batch_size)


def clip_gradients(model: nn.Module | Iterable[torch.Tensor], max_norm: float | None) -> float:
    """Clip the gradients' global L2 norm to ``max_norm`` (no clipping when None).

    Returns the total norm before clipping (0.0 when no parameter has a gradient).
    """
    params = model.parameters() if isinstance(model, nn.Module) else model
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm is None:
        total = torch.nn.utils.get_total_norm([p.grad for p in grads])
    else:
        total = torch.nn.utils.clip_grad_norm_(grads, max_norm)
    return float(total)
