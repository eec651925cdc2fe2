"""Loss normalisers shared by the processes of a data-parallel run.

A detector's loss is normalised by a count over the global batch (the number of
positive anchors, say); under DDP each process sees only its slice, so the count is
summed over processes first. Outside an initialised process group of more than one
process each function is the 1-process value, so models call them unconditionally.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over ranks (a copy; ``tensor`` itself when not distributed)."""
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def mean_count_over_ranks(count: Tensor) -> Tensor:
    """``max(Σ_ranks count, 1) / world_size``: a loss normaliser (number of positives)
    shared by all ranks, as mmdetection's ``reduce_mean``.

    DDP averages gradients over ranks, so ``loss_r / mean_count_over_ranks(n_r)`` on
    every rank gives the gradient of ``Σ_r loss_r / max(Σ_r n_r, 1)``, the 1-process
    loss over the global batch. In a 1-process run this is ``max(count, 1)``.
    """
    if not is_distributed():
        return count.clamp(min=1)
    total = count.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.clamp(min=1) / dist.get_world_size()
