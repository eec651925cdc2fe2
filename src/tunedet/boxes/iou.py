"""IoU and its relatives (GIoU, DIoU, CIoU), pairwise and aligned.

For boxes ``a`` and ``b`` (xyxy, no +1), ``C`` their smallest enclosing box:

- IoU  = |a ∩ b| / |a ∪ b|
- GIoU = IoU − (|C| − |a ∪ b|) / |C|                      (Rezatofighi et al. 2019)
- DIoU = IoU − ρ²(centre_a, centre_b) / diag(C)²           (Zheng et al. 2020)
- CIoU = DIoU − α·v, v = 4/π²·(atan(w_b/h_b) − atan(w_a/h_a))², α = v / (1 − IoU + v),
  α held constant (no gradient), as in the paper.

``eps`` is added to every denominator, so values and gradients stay finite for
zero-area, identical and disjoint boxes. Half-precision inputs are computed in
float32 (areas overflow float16) and returned as float32.

Pairwise forms take ``a (..., N, 4)`` and ``b (..., M, 4)`` (leading dims broadcast,
e.g. ``(B, N, 4)`` vs ``(B, M, 4)``) and return ``(..., N, M)``. The aligned form
takes ``a, b (..., 4)`` and returns ``(...)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

IoUKind = Literal["iou", "giou", "diou", "ciou"]
IOU_KINDS = ("iou", "giou", "diou", "ciou")


def _upcast(boxes: Tensor) -> Tensor:
    if boxes.dtype in (torch.float16, torch.bfloat16):
        return boxes.float()
    return boxes


def _iou_family(a: Tensor, b: Tensor, kind: str, eps: float) -> Tensor:
    """Element-wise (broadcasting) IoU of kind ``kind`` between ``a (..., 4)`` and ``b (..., 4)``."""
    if kind not in IOU_KINDS:
        raise ValueError(f"unknown IoU kind '{kind}' (choices: {', '.join(IOU_KINDS)})")
    a, b = _upcast(a), _upcast(b)
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    inter_lt = torch.maximum(a[..., :2], b[..., :2])
    inter_rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter_wh = (inter_rb - inter_lt).clamp(min=0)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = wa * ha + wb * hb - inter
    iou = inter / (union + eps)
    if kind == "iou":
        return iou

    enclose_wh = (
        torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    ).clamp(min=0)
    if kind == "giou":
        enclose_area = enclose_wh[..., 0] * enclose_wh[..., 1]
        return iou - (enclose_area - union) / (enclose_area + eps)

    diag_sq = enclose_wh[..., 0] ** 2 + enclose_wh[..., 1] ** 2 + eps
    centre_dx = (a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) * 0.5
    centre_dy = (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) * 0.5
    diou = iou - (centre_dx**2 + centre_dy**2) / diag_sq
    if kind == "diou":
        return diou

    v = (4 / math.pi**2) * (torch.atan(wb / (hb + eps)) - torch.atan(wa / (ha + eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def _pairwise(a: Tensor, b: Tensor, kind: str, eps: float) -> Tensor:
    return _iou_family(a[..., :, None, :], b[..., None, :, :], kind, eps)


def box_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise IoU: ``a (..., N, 4)``, ``b (..., M, 4)`` xyxy → ``(..., N, M)`` in ``[0, 1]``."""
    return _pairwise(a, b, "iou", eps)


def generalized_box_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise GIoU: ``a (..., N, 4)``, ``b (..., M, 4)`` xyxy → ``(..., N, M)`` in ``[-1, 1]``."""
    return _pairwise(a, b, "giou", eps)


def distance_box_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise DIoU: ``a (..., N, 4)``, ``b (..., M, 4)`` xyxy → ``(..., N, M)`` in ``[-1, 1]``."""
    return _pairwise(a, b, "diou", eps)


def complete_box_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Pairwise CIoU: ``a (..., N, 4)``, ``b (..., M, 4)`` xyxy → ``(..., N, M)``.

    The aspect term treats ``b`` as the reference (ground truth); it is symmetric anyway.
    """
    return _pairwise(a, b, "ciou", eps)


def aligned_box_iou(a: Tensor, b: Tensor, kind: IoUKind = "iou", eps: float = 1e-7) -> Tensor:
    """IoU of kind ``kind`` between matching boxes: ``a, b (..., 4)`` xyxy → ``(...)``.

    Equal to the diagonal of the pairwise form; ``b`` is the reference box for CIoU.
    """
    return _iou_family(a, b, kind, eps)
