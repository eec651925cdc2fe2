"""IoU between all anchors and a padded batch of GT, reduced as it is computed.

The full IoU matrix of a batch is large: 16 images × 100 GT × 76 725 RetinaNet anchors
(640 px) is 123 M floats, and every temporary of a naive pairwise IoU is that size again,
so the computation is bound by memory traffic. ``summarise_iou`` computes the same values
over chunks of anchors sized to stay in the CPU cache (``(B, M, chunk)``, all images and
GTs at once) and keeps only the reductions the assigners need: each anchor's best GT
(and optionally its top K), each GT's best IoU, and each chunk's per-GT maximum, from
which ``gt_best_anchors`` recomputes just the chunks that hold a GT's best anchors.

IoU here is ``inter / union`` (union clamped at 1e-7), evaluated with the same
operations everywhere, so ``aligned_anchor_iou`` reproduces an entry bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

UNION_EPS = 1e-7
# (B, M, chunk) temporaries of this many floats fit the L2 cache of a CPU core
CPU_CHUNK_ELEMENTS = 1 << 18
DEVICE_CHUNK_ELEMENTS = 1 << 26


class IoUSummary(NamedTuple):
    """Reductions of the (B, M, A) IoU matrix (padded GT rows count as IoU -1).

    best_iou, best_gt: (B, A) each anchor's highest IoU and its GT (first on ties);
        ``best_iou`` is -1 for images without GT.
    gt_best_iou: (B, M) each GT's highest IoU over all anchors (-1 for padding).
    chunk_max: (B, M, num_chunks) each GT's highest IoU within each chunk of anchors.
    chunk: anchors per chunk.
    topk_iou, topk_gt: (B, K, A) each anchor's K best GTs, by decreasing IoU (ties: lower
        GT index first), or None when not asked for.
    """

    best_iou: Tensor
    best_gt: Tensor
    gt_best_iou: Tensor
    chunk_max: Tensor
    chunk: int
    topk_iou: Tensor | None = None
    topk_gt: Tensor | None = None


def _corners(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)


def _iou(gt: tuple[Tensor, ...], anchor: tuple[Tensor, ...]) -> Tensor:
    """IoU from corner tuples ``(x1, y1, x2, y2, area)`` that broadcast against each other."""
    gx1, gy1, gx2, gy2, garea = gt
    ax1, ay1, ax2, ay2, aarea = anchor
    inter = torch.minimum(gx2, ax2)
    inter.sub_(torch.maximum(gx1, ax1)).clamp_(min=0)
    height = torch.minimum(gy2, ay2)
    height.sub_(torch.maximum(gy1, ay1)).clamp_(min=0)
    inter.mul_(height)
    union = garea + aarea
    union.sub_(inter).clamp_(min=UNION_EPS)
    return inter.div_(union)


def aligned_anchor_iou(gt_boxes: Tensor, anchors: Tensor) -> Tensor:
    """IoU of matching pairs, broadcasting: ``gt_boxes (..., 4)``, ``anchors (..., 4)`` → ``(...)``.

    Bit-identical to the corresponding entry of ``summarise_iou``'s computation.
    """
    gt_boxes, anchors = torch.broadcast_tensors(gt_boxes, anchors)
    return _iou(_corners(gt_boxes), _corners(anchors))


def chunk_size(num_images: int, num_gt: int, num_anchors: int, device: torch.device) -> int:
    """Anchors per chunk so that a (B, M, chunk) temporary stays cache-sized on CPU."""
    budget = CPU_CHUNK_ELEMENTS if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS
    return max(1, min(num_anchors, max(64, budget // max(1, num_images * num_gt))))


def summarise_iou(anchors: Tensor, gt_boxes: Tensor, valid: Tensor, topk: int = 0) -> IoUSummary:
    """anchors: (A, 4) xyxy, or (B, A, 4) one set per image (a second stage's proposals);
    gt_boxes: (B, M, 4) xyxy; valid: (B, M) bool (False = padding).

    ``topk > 0`` also keeps each anchor's ``min(topk, M)`` best GTs. The loop runs over
    chunks of anchors only (never over images or GTs) to bound the temporaries' size.
    """
    num_images, num_gt = valid.shape
    num_anchors = anchors.shape[-2]
    chunk = chunk_size(num_images, num_gt, num_anchors, anchors.device)
    gt = tuple(t[..., None] for t in _corners(gt_boxes))  # each (B, M, 1)
    padding = ~valid[..., None]
    anchor_corners = _corners(anchors)  # each (A,), or (B, A) → (B, 1, A)
    if anchors.dim() == 3:
        anchor_corners = tuple(t[:, None, :] for t in anchor_corners)
    best_iou, best_gt, chunk_max, topk_iou, topk_gt = [], [], [], [], []
    k = min(topk, num_gt)
    for start in range(0, num_anchors, chunk):
        piece = tuple(t[..., start : start + chunk] for t in anchor_corners)
        ious = _iou(gt, piece).masked_fill_(padding, -1.0)  # (B, M, c)
        value, index = ious.max(dim=1)
        best_iou.append(value)
        best_gt.append(index)
        chunk_max.append(ious.amax(dim=2))
        if k > 0:  # k rounds of max (first index on ties), each taking its GT out
            values, indices = [value], [index]
            for _ in range(k - 1):
                ious.scatter_(1, indices[-1][:, None, :], -2.0)
                value, index = ious.max(dim=1)
                values.append(value)
                indices.append(index)
            topk_iou.append(torch.stack(values, dim=1))
            topk_gt.append(torch.stack(indices, dim=1))
    chunk_max_all = torch.stack(chunk_max, dim=2)
    return IoUSummary(
        best_iou=torch.cat(best_iou, dim=1),
        best_gt=torch.cat(best_gt, dim=1),
        gt_best_iou=chunk_max_all.amax(dim=2),
        chunk_max=chunk_max_all,
        chunk=chunk,
        topk_iou=torch.cat(topk_iou, dim=2) if k > 0 else None,
        topk_gt=torch.cat(topk_gt, dim=2) if k > 0 else None,
    )


def gt_best_anchors(
    anchors: Tensor, gt_boxes: Tensor, summary: IoUSummary, eligible: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Every (image, GT, anchor) where an ``eligible (B, M)`` GT reaches its highest IoU.

    Ties are all returned, ordered by image, GT, then anchor. Only the chunks whose
    maximum equals the GT's best IoU are recomputed.
    """
    num_anchors = anchors.shape[-2]
    flagged = (summary.chunk_max == summary.gt_best_iou[..., None]) & eligible[..., None]
    image, gt, chunk_index = flagged.nonzero(as_tuple=True)
    offsets = torch.arange(summary.chunk, device=anchors.device)
    anchor_index = chunk_index[:, None] * summary.chunk + offsets  # (F, chunk)
    in_range = anchor_index < num_anchors
    anchor_index = anchor_index.clamp(max=num_anchors - 1)
    candidates = (
        anchors[image[:, None], anchor_index] if anchors.dim() == 3 else anchors[anchor_index]
    )
    ious = aligned_anchor_iou(gt_boxes[image, gt][:, None, :], candidates)
    tie = (ious == summary.gt_best_iou[image, gt][:, None]) & in_range
    row, column = tie.nonzero(as_tuple=True)
    return image[row], gt[row], anchor_index[row, column]
