"""L1-norm channel pruning (Li et al. 2017) as model surgery: the conv → norm → conv
chains of a detector, shrinking them to the filters kept, and rebuilding a pruned
checkpoint's narrower structure before its weights are loaded (``tunedet prune``,
``deploy/prune.py``; every checkpoint loader calls ``restore_pruned_structure``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

# ---------------------------------------------------------------- L1-norm channel pruning


def filter_l1_norms(conv: nn.Conv2d) -> Tensor:
    """``Σ |W_i|`` over each output filter of ``conv``: (out_channels,)."""
    return conv.weight.detach().abs().sum(dim=(1, 2, 3))


@dataclass
class Chain:
    """``conv → norm → (activation) → next`` whose middle channels can be removed: each
    part as (the module holding it, its attribute name); ``name`` is the conv's path."""

    name: str
    conv: tuple[nn.Module, str]
    norm: tuple[nn.Module, str]
    next: tuple[nn.Module, str]

    def get(self, part: str) -> nn.Module:
        holder, attr = getattr(self, part)
        return getattr(holder, attr)

    def set(self, part: str, module: nn.Module) -> None:
        holder, attr = getattr(self, part)
        setattr(holder, attr, module)


def _prunable(conv: Any, norm: Any, nxt: Any) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(nxt, nn.Conv2d)
        and conv.groups == 1
        and nxt.groups == 1
        and isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d))
        and norm.num_features == conv.out_channels == nxt.in_channels
    )


def _conv_norm(module: nn.Module) -> bool:
    """A ``Sequential(conv, norm, ...)`` (``ConvNormAct``)."""
    return isinstance(module, nn.Sequential) and len(module) >= 2


def channel_chains(model: nn.Module) -> list[Chain]:
    """The chains `l1_channel_prune` shrinks: inside residual blocks (modules with ``conv1,
    bn1, conv2, bn2``) ``conv1 → bn1 → conv2`` and ``conv2 → bn2 → conv3``; in a plain
    ``Sequential`` of ``ConvNormAct`` layers (VGG-style stages) each layer's conv and norm
    with the next layer's conv. Only BatchNorm/FrozenBatchNorm and ungrouped convs."""
    chains = []
    for name, block in model.named_modules():
        prefix = f"{name}." if name else ""
        if hasattr(block, "bn2"):
            for a, n, b in (("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")):
                if _prunable(*(getattr(block, attr, None) for attr in (a, n, b))):
                    chains.append(Chain(prefix + a, (block, a), (block, n), (block, b)))
        if isinstance(block, nn.Sequential):
            children = list(block.named_children())
            for (ia, first), (_, second) in zip(children, children[1:], strict=False):
                if not (_conv_norm(first) and _conv_norm(second)):
                    continue
                (c, n), s = list(first._modules)[:2], next(iter(second._modules))
                if _prunable(first[0], first[1], second[0]):
                    chains.append(Chain(f"{prefix}{ia}.{c}", (first, c), (first, n), (second, s)))
    return chains


def _shrink_chain(chain: Chain, keep: Tensor) -> None:
    """Replace the chain's conv / norm / next conv by copies keeping channels ``keep``."""
    conv, norm, nxt = chain.get("conv"), chain.get("norm"), chain.get("next")
    k = len(keep)
    device, dtype = conv.weight.device, conv.weight.dtype
    new_conv = nn.Conv2d(
        conv.in_channels, k, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    ).to(device, dtype)  # fmt: skip
    new_nxt = nn.Conv2d(
        k, nxt.out_channels, nxt.kernel_size, nxt.stride, nxt.padding, nxt.dilation,
        bias=nxt.bias is not None, padding_mode=nxt.padding_mode,
    ).to(device, dtype)  # fmt: skip
    if isinstance(norm, FrozenBatchNorm2d):
        new_norm = FrozenBatchNorm2d(k, eps=norm.eps).to(device)
    else:
        new_norm = nn.BatchNorm2d(k, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
        new_norm = new_norm.to(device, dtype)
        new_norm.train(norm.training)
    with torch.no_grad():
        new_conv.weight.copy_(conv.weight[keep])
        if conv.bias is not None:
            new_conv.bias.copy_(conv.bias[keep])
        new_nxt.weight.copy_(nxt.weight[:, keep])
        if nxt.bias is not None:
            new_nxt.bias.copy_(nxt.bias)
        for key in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(norm, key, None)
            if value is not None:
                getattr(new_norm, key).copy_(value[keep])
    for new, old in ((new_conv, conv), (new_nxt, nxt), (new_norm, norm)):
        for param_new, param_old in zip(new.parameters(), old.parameters(), strict=True):
            param_new.requires_grad_(param_old.requires_grad)
    chain.set("conv", new_conv)
    chain.set("norm", new_norm)
    chain.set("next", new_nxt)


def l1_channel_prune(model: nn.Module, ratio: float) -> dict[str, int]:
    """Remove the ``ratio`` filters of smallest L1 norm from every chain of
    `channel_chains` (at least one filter stays), each layer ranked on the weights before
    any is pruned (Li et al.'s independent strategy). Returns ``{conv path: width}``."""
    if not 0 <= ratio < 1:
        raise ValueError(f"prune ratio must lie in [0, 1), got {ratio}")
    chains = channel_chains(model)
    if not chains:
        raise ValueError(
            f"l1-channel pruning: {type(model).__name__} has no conv → BatchNorm → conv chain "
            "to prune (residual blocks, or plain conv stages with norm: bn)"
        )
    keeps = []  # every layer ranked on the trained weights (the paper's independent pruning)
    for chain in chains:
        conv = chain.get("conv")
        k = max(1, conv.out_channels - int(math.floor(ratio * conv.out_channels)))
        keeps.append(filter_l1_norms(conv).argsort(descending=True, stable=True)[:k].sort().values)
    for chain, keep in zip(chains, keeps, strict=True):
        _shrink_chain(chain, keep)
    return {chain.name: len(keep) for chain, keep in zip(chains, keeps, strict=True)}


def restore_pruned_structure(model: nn.Module, state: dict[str, Any]) -> nn.Module:
    """Shrink a freshly built ``model`` to the channel widths of a pruned checkpoint's
    ``"pruning"`` entry (nothing to do for other checkpoints), before loading its weights."""
    widths = (state.get("pruning") or {}).get("widths") or {}
    if not widths:
        return model
    for chain in channel_chains(model):
        width = widths.get(chain.name)
        if width is not None and width != chain.get("conv").out_channels:
            _shrink_chain(chain, torch.arange(width))
    return model
