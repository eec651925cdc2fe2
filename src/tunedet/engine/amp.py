"""Mixed precision (Micikevicius et al. 2018): ``none``, ``bf16`` (CPU or CUDA autocast, no loss scaling)
or ``fp16`` (CUDA autocast with a ``torch.amp.GradScaler``); ``auto`` picks bf16 where the
hardware computes it natively and the detector family was measured to keep its AP in it,
fp32 otherwise. Master weights and optimizer state stay fp32 in every mode.

The device is taken from the model's parameters, never hard-coded.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch import nn

AmpMode = Literal["auto", "none", "bf16", "fp16"]

# Detector types (``model.type``) whose demo configs reach the fp32 AP within 0.01 when
# trained in bf16 (mean of two seeds, full schedule; benchmarks/step_table.py --accuracy,
# docs/PERFORMANCE.md). ``amp: auto`` uses bf16 only for these.
BF16_FAMILIES = frozenset({"retinanet", "fcos", "fsaf", "faster_rcnn", "yolov3", "ssd"})
# (fcos: the fcos, atss and onenet demos; not measured in bf16 yet: mask_rcnn, cornernet)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); CPU for an empty model."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and what says so: CUDA's own check
    (Ampere and newer), or the CPU's AVX-512 BF16 / AMX instructions (oneDNN uses them
    for bf16 convolutions and matmuls; without them bf16 is emulated and slower)."""
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, "CUDA bf16" if ok else "this GPU has no native bf16"
    if device.type == "cpu":
        if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
            return True, "the CPU has AMX"
        if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
            return True, "the CPU has AVX-512 BF16"
        return False, "the CPU has no native bf16 (no AVX-512 BF16 or AMX)"
    return False, f"no bf16 autocast on {device.type}"


def resolve_amp(mode: AmpMode, device: torch.device, model_type: str) -> tuple[str, str]:
    """The precision to train in and why: ``mode`` itself unless it is ``auto``."""
    if mode != "auto":
        return mode, "set in train.amp"
    native, why = native_bf16(device)
    if not native:
        return "none", f"auto: {why}"
    if model_type not in BF16_FAMILIES:
        return "none", f"auto: {model_type} is not measured to keep its AP in bf16"
    return "bf16", f"auto: {why}, and {model_type} keeps its AP in bf16"


def check_amp(mode: AmpMode, device: torch.device, name: str = "train.amp") -> None:
    """Refuse combinations that do not work: fp16 needs CUDA (its autocast and loss
    scaling are not supported elsewhere), bf16 needs CPU or CUDA. ``name`` is the key or
    flag the mode came from, for the message."""
    if mode == "fp16" and device.type != "cuda":
        raise ValueError(f"{name}=fp16 needs a CUDA device (got {device.type}); use bf16")
    if mode == "bf16" and device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}=bf16 runs on CPU or CUDA, not on {device.type}")


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
