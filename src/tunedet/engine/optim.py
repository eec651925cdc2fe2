"""Optimizers with parameter groups, and gradient clipping.

Weight decay is L2 in the optimizer, applied per group (SPEC S3): ordinary weights
get ``weight_decay``, normalisation layers' weights and biases get ``norm_decay`` and
other biases ``bias_decay`` (both 0 by default, as in Detectron and mmdetection).

Each registered optimizer takes ``params`` from the builder: either a model (the
groups are formed here from the decay settings) or ready param groups/tensors,
which are used as given.
"""

from collections.abc import Iterable
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from tunedet.config.registry import build, register

LearningRate = Annotated[float, Field(gt=0)]
Decay = Annotated[float, Field(ge=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def param_groups(
    model: nn.Module, weight_decay: float, norm_decay: float = 0.0, bias_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into decay / norm / bias groups.

    Returns up to three groups ``{"params": [...], "weight_decay": float, "name": str}``
    named ``"decay"``, ``"norm"`` (weights and biases of norm layers) and ``"bias"``
    (biases of other layers); empty groups are dropped. Parameters with
    ``requires_grad=False`` are skipped, shared parameters appear once.
    """
    decay: list[nn.Parameter] = []
    norm: list[nn.Parameter] = []
    bias: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if is_norm:
                norm.append(param)
            elif name == "bias":
                bias.append(param)
            else:
                decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": norm, "weight_decay": norm_decay, "name": "norm"},
        {"params": bias, "weight_decay": bias_decay, "name": "bias"},
    ]
    return [g for g in groups if g["params"]]


def _groups(
    params: nn.Module | Iterable[Any], weight_decay: float, norm_decay: float, bias_decay: float
) -> Any:
    if isinstance(params, nn.Module):
        return param_groups(params, weight_decay, norm_decay, bias_decay)
    return params


@register("optimizer", "sgd", injected=("params",))
def sgd(
    params: Any,
    lr: LearningRate = 0.01,
    momentum: Decay = 0.9,
    nesterov: bool = False,
    weight_decay: Decay = 1e-4,
    norm_decay: Decay = 0.0,
    bias_decay: Decay = 0.0,
) -> torch.optim.SGD:
    """SGD with momentum (and Nesterov), L2 weight decay per parameter group."""
    groups = _groups(params, weight_decay, norm_decay, bias_decay)
    return torch.optim.SGD(
        groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


@register("optimizer", "adamw", injected=("params",))
def adamw(
    params: Any,
    lr: LearningRate = 1e-3,
    betas: tuple[Beta, Beta] = (0.9, 0.999),
    eps: Annotated[float, Field(gt=0)] = 1e-8,
    weight_decay: Decay = 0.05,
    norm_decay: Decay = 0.0,
    bias_decay: Decay = 0.0,
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter): decoupled weight decay per parameter group."""
    groups = _groups(params, weight_decay, norm_decay, bias_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@register("optimizer", "adam", injected=("params",))
def adam(
    params: Any,
    lr: LearningRate = 1e-3,
    betas: tuple[Beta, Beta] = (0.9, 0.999),
    eps: Annotated[float, Field(gt=0)] = 1e-8,
    weight_decay: Decay = 0.0,
    norm_decay: Decay = 0.0,
    bias_decay: Decay = 0.0,
) -> torch.optim.Adam:
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient."""
    groups = _groups(params, weight_decay, norm_decay, bias_decay)
    return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def build_optimizer(model: nn.Module, spec: Any) -> torch.optim.Optimizer:
    """The optimizer of a validated ``optimizer`` spec (``{"type": "sgd", "lr": ..., ...}``)
    over ``model``'s trainable parameters, grouped by ``weight_decay``/``norm_decay``/``bias_decay``."""
    return build("optimizer", spec, params=model)


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
