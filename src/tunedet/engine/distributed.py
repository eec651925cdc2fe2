"""Data-parallel training on PyTorch's own engine (``torch.distributed`` + DDP).

``torchrun --nproc_per_node N -m tunedet.cli.main train CONFIG`` starts N processes
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment;
``init_from_env`` joins them into one process group (NCCL when the run is on CUDA,
gloo on CPU) and pins each process to the GPU of its local rank. Every helper here
is a no-op (or the identity) in a 1-process run, so the trainer calls them
unconditionally.

The collectives (``gather_objects``, ``broadcast_object``, ``any_over_ranks``, and the
loss normalisers ``reduce_mean`` and ``mean_count_over_ranks``, which live below the
models that call them in ``losses/rank_mean.py``) must be called by every rank in the
same order, or the run hangs.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from tunedet.losses.rank_mean import is_distributed


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def env_world_size() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 when absent or unreadable)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def process_device(device: torch.device) -> torch.device:
    """``device`` for this process: the GPU of ``LOCAL_RANK`` when distributed on CUDA."""
    if device.type == "cuda" and device.index is None and env_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_from_env(device: torch.device) -> bool:
    """Join the process group described by torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``); NCCL for CUDA, gloo otherwise.

    Returns True when this process now belongs to a group of more than one process.
    """
    if env_world_size() == 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        device = process_device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return is_distributed()


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_over_ranks(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of ``flags`` over ranks (every rank gets the same answer)."""
    if not is_distributed():
        return list(flags)
    values = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class LossForward(nn.Module):
    """``forward(images, gt_boxes, gt_labels, **extras) = detector.loss(...)``: DDP
    synchronises the gradients of what runs inside its wrapped module's ``forward``, and a
    detector's training entry point is ``loss``. ``extras`` (``gt_masks``,
    ``image_sizes``: ``models.detectors.loss_extras``) are passed on as given."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(
        self, images: Tensor, gt_boxes: Tensor, gt_labels: Tensor, **extras: Tensor
    ) -> dict[str, Tensor]:
        return self.detector.loss(images, gt_boxes, gt_labels, **extras)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``model`` replaced by ``nn.SyncBatchNorm`` (statistics over
    the global batch). PyTorch implements SyncBN for GPUs only: refused on CPU."""
    if device.type == "cpu":
        raise ValueError(
            "train.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); "
            "use GroupNorm (norm: gn) or train.sync_bn=false on CPU"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(detector: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``DistributedDataParallel`` over ``LossForward(detector)``: calling it returns the
    loss terms and the backward pass averages the gradients over ranks."""
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(LossForward(detector), device_ids=device_ids)
