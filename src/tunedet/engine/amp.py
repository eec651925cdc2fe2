"""Mixed precision (Micikevicius et al. 2018): ``none``, ``bf16`` (CPU or CUDA autocast, no loss scaling)
or ``fp16`` (CUDA autocast with a ``torch.amp.GradScaler``).

The device is taken from the model's parameters, never hard-coded.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch import nn

AmpMode = Literal["none", "bf16", "fp16"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); CPU for an empty model."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def check_amp(mode: AmpMode, device: torch.device) -> None:
    """Refuse combinations that do not work: fp16 needs CUDA (its autocast and loss
    scaling are not supported elsewhere), bf16 needs CPU or CUDA."""
    if mode == "fp16" and device.type != "cuda":
        raise ValueError(f"train.amp=fp16 needs a CUDA device (got {device.type}); use bf16")
    if mode == "bf16" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"train.amp=bf16 runs on CPU or CUDA, not on {device.type}")


def autocast(mode: AmpMode, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for ``mode`` on ``device`` (a no-op for ``none``)."""
    if mode == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[mode])


def grad_scaler(mode: AmpMode, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16, None otherwise (bf16 has float32's exponent range)."""
    if mode != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
