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


def setup_param_groups(
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
    groups, lr = setup_param_groups(
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
    groups, lr = setup_param_groups(
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
    groups, lr = setup_param_groups(
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
    groups, lr = setup_param_groups(
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
    groups, lr = setup_param_groups(
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
    groups, lr = setup_param_groups(
        params, lr, weight_decay, norm_decay, bias_decay, param_multipliers, l1,
        auto_scale_lr, base_batch, batch_size,
    )  # fmt: skip
    return torch.optim.Adadelta(groups, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)


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
