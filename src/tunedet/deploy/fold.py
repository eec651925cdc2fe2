"""Fold inference-mode BatchNorm into the convolution before it, and channels_last.

For a conv ``y = w * x + b`` followed by BN ``γ (y − μ) / √(σ² + ε) + β`` (running
statistics), one conv computes the same: ``ŵ = γ w / √(σ² + ε)`` (per output channel)
and ``b̂ = γ (b − μ) / √(σ² + ε) + β``. The BN becomes an ``nn.Identity``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from tunedet.models.layers import output_conv

_BATCH_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.Module) -> None:
    """Rewrite ``conv``'s weight and bias (in place) so that it equals ``bn(conv(x))``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight))
    new_bias = (bias - bn.running_mean) * scale + shift
    conv.bias = nn.Parameter(new_bias.to(conv.weight), requires_grad=conv.weight.requires_grad)


def _conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Conv2d, str]]:
    """(conv, name of the BN child of ``module``) for each BN that directly follows a conv:
    consecutive children of an ``nn.Sequential`` (``ConvNormAct``, torchvision's
    ``downsample``) and sibling pairs ``convK`` / ``bnK`` (torchvision ResNet blocks)."""
    pairs = []
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        names = list(children)
        for before, name in zip(names, names[1:], strict=False):
            conv = children[before]
            conv = output_conv(conv) if isinstance(conv, nn.Sequential) else conv
            if isinstance(children[name], _BATCH_NORMS) and isinstance(conv, nn.Conv2d):
                pairs.append((conv, name))
    for name, child in children.items():
        if name.startswith("bn") and isinstance(child, _BATCH_NORMS):
            conv = children.get("conv" + name[2:])
            if isinstance(conv, nn.Conv2d):
                pairs.append((conv, name))
    return pairs


def fold_conv_bn(model: nn.Module, inplace: bool = False) -> tuple[nn.Module, int]:
    """Eval-mode copy of ``model`` (or ``model`` itself when ``inplace``) with every
    conv → BatchNorm pair folded into the conv; returns ``(model, number folded)``."""
    model = model if inplace else copy.deepcopy(model)
    model.eval()
    folded = 0
    for module in list(model.modules()):
        for conv, bn_name in _conv_bn_pairs(module):
            bn = getattr(module, bn_name)
            if conv.out_channels != bn.running_mean.numel():
                continue
            fold_bn_into_conv(conv, bn)
            setattr(module, bn_name, nn.Identity())
            folded += 1
    return model, folded


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with 4-D parameters in channels_last (NHWC) memory order, in place; feed it
    ``images.contiguous(memory_format=torch.channels_last)``."""
    return model.to(memory_format=torch.channels_last)
