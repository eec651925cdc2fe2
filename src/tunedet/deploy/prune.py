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
from typing import Any

import torch
from torch import Tensor, nn

# L1-norm channel pruning is model surgery (models/channel_pruning.py); re-exported here
from tunedet.models.channel_pruning import (  # noqa: F401
    Chain,
    channel_chains,
    filter_l1_norms,
    l1_channel_prune,
    restore_pruned_structure,
)

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
