"""Pruning a trained detector: unstructured magnitude pruning and L1-norm channel pruning.

- ``magnitude`` (Han et al. 2015, "Learning both Weights and Connections"): in every
  Conv2d and Linear layer the fraction ``ratio`` of weights of smallest |w| is set to 0;
  the masks are re-applied after each fine-tuning step so the pruned weights stay 0. The
  layers keep their dense shapes: the parameter count that matters is the nonzero one,
  and dense kernels run no faster.
- ``l1-channel`` (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): inside every
  residual block (a module with ``conv1, bn1, conv2, bn2`` and, for a bottleneck,
  ``conv3, bn3``) each convolution that feeds the next one of the block loses the
  fraction ``ratio`` of its filters with the smallest L1 norm ``Σ|W_i|``, with their
  norm channels and the next convolution's input channels; so does each layer of a plain
  ``Sequential`` of conv-norm-activation layers that feeds the next one (the paper's VGG
  rule). Block outputs (the residual sums, the stages' outputs) keep their width, as in
  the paper's ResNet experiments; grouped convolutions and norms other than
  BatchNorm/FrozenBatchNorm are left alone. The layers shrink, so parameters, FLOPs and
  latency all drop.

A pruned checkpoint stores ``"pruning": {"method", "ratio", "widths"}``;
`restore_pruned_structure` shrinks a freshly built detector to those widths before its
weights are loaded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

METHODS = ("magnitude", "l1-channel")


# ---------------------------------------------------------------- magnitude pruning


def magnitude_prune(model: nn.Module, ratio: float) -> dict[str, Tensor]:
    """Zero the ``ratio`` smallest-|w| weights of every Conv2d/Linear layer (per layer).

    Returns ``{parameter name: bool mask (True = kept)}`` for `apply_masks`.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"prune ratio must lie in [0, 1), got {ratio}")
    masks = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        weight = module.weight.detach()
        k = int(math.floor(ratio * weight.numel()))
        mask = torch.ones_like(weight, dtype=torch.bool)
        if k > 0:
            order = weight.abs().flatten().argsort(stable=True)
            mask.view(-1)[order[:k]] = False
        with torch.no_grad():
            module.weight.mul_(mask)
        masks[f"{name}.weight" if name else "weight"] = mask
    return masks


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Set the weights outside ``masks`` back to 0 (after an optimizer step)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device))


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


# ---------------------------------------------------------------- measurements


def nonzero_parameters(model: nn.Module) -> int:
    """Parameters of ``model`` that are not exactly 0."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


@torch.no_grad()
def cpu_latency_ms(
    model: nn.Module, images: Tensor, image_sizes: Tensor, repeats: int = 5
) -> float:
    """Fastest wall time (ms) of ``model.predict`` over ``repeats`` runs after one warm-up
    (the least disturbed run: robust to other processes on the CPU)."""
    model.eval()
    model.predict(images, image_sizes)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        model.predict(images, image_sizes)
        times.append(time.perf_counter() - start)
    return 1000.0 * min(times)


def finetune(
    model: nn.Module,
    cfg: Any,
    iters: int,
    lr: float,
    device: torch.device,
    masks: dict[str, Tensor] | None = None,
    log: Any = print,
) -> None:
    """``iters`` steps of the config's optimizer at constant ``lr`` on ``data.train``
    (its training transforms), re-applying ``masks`` after every step."""
    from tunedet.data.build import build_dataset, build_loader
    from tunedet.engine.optim import build_optimizer, clip_gradients
    from tunedet.models.detectors import loss_extras

    if iters <= 0:
        return
    loader = build_loader(
        build_dataset(cfg.data.train),
        cfg.data.train_transforms,
        seed=cfg.seed,
        batch_size=cfg.data.batch_size,
        size_divisor=cfg.data.size_divisor,
    )
    spec = {**cfg.optim.model_dump(), "lr": lr, "auto_scale_lr": False}
    optimizer = build_optimizer(model, spec, batch_size=cfg.data.batch_size)
    model.train()
    step = 0
    while step < iters:
        for batch in loader:
            batch = batch.to(device)
            losses = model.loss(
                batch.images, batch.gt_boxes, batch.gt_labels, **loss_extras(model, batch)
            )
            total = sum(losses.values())
            if not torch.isfinite(total):
                raise FloatingPointError(f"fine-tuning: non-finite loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            clip_gradients(model, cfg.train.grad_clip)
            optimizer.step()
            if masks:
                apply_masks(model, masks)
            step += 1
            if step % max(1, iters // 5) == 0 or step == iters:
                log(f"fine-tune {step}/{iters}: loss {total.item():.4f}")
            if step >= iters:
                break
    model.eval()
