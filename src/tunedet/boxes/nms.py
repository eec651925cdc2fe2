"""Soft-NMS (Bodla et al. 2017), batched over groups and vectorised.

The classic algorithm repeats: select the remaining box ``M`` of highest score, then
decay the score of every other remaining box ``b`` of its group by
``f(IoU(M, b))`` and drop boxes whose score falls below ``score_threshold``:

- linear:   f(u) = 1 − u if u ≥ iou_threshold else 1
- gaussian: f(u) = exp(−u² / sigma)

It is one box per step. Two exact facts let one step select many boxes:

1. Groups (``idxs``: classes, images) are independent and run in lock-step.
2. Take the highest-scoring remaining boxes of a group in order. One that no higher
   box of this list decays (f = 1 with each) keeps its score until the classic loop
   selects it (only higher boxes can be selected before it, and none touches it), and
   it decays none of the higher boxes. So all such boxes are selected in one step, and
   each one's decay applies to exactly the boxes below it: all decays of the step are
   applied at once (a product, so their order does not matter).

Kept boxes and their final scores are those of the classic loop (up to float rounding
of the products); ties in score may be broken differently.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

SoftNMSMethod = Literal["linear", "gaussian"]

# candidates examined per step: start here, double while every candidate is selected
# (sparse overlaps), halve while fewer than a quarter are (dense clusters)
_CANDIDATES = 128
_MIN_CANDIDATES, _MAX_CANDIDATES = 32, 1024


def soft_nms_decay(
    iou: Tensor, method: SoftNMSMethod, iou_threshold: float = 0.3, sigma: float = 0.5
) -> Tensor:
    """Score factor f(IoU) of Soft-NMS: linear ``1 − u`` where ``u ≥ iou_threshold`` (else
    1), gaussian ``exp(−u² / sigma)``. Same shape as ``iou``."""
    if method == "linear":
        return torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
    if method == "gaussian":
        return torch.exp(-(iou * iou) / sigma)
    raise ValueError(f"unknown Soft-NMS method '{method}' (choices: linear, gaussian)")


def _pair_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU (N, M) of xyxy boxes ``a (N, 4)`` and ``b (M, 4)``; 0 where the union is empty.
    (Per coordinate on (N, M) planes: broadcasting over a trailing dim of 2 is slow on CPU.)"""
    ax1, ay1, ax2, ay2 = (c[:, None] for c in a.unbind(1))
    bx1, by1, bx2, by2 = (c[None, :] for c in b.unbind(1))
    width = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    height = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    inter = width.mul_(height)
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    union = (area_a + area_b).sub_(inter)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor | None = None,
    method: SoftNMSMethod = "gaussian",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS per group of ``idxs`` (boxes of different groups never decay each other).

    boxes: (N, 4) xyxy; scores: (N,); idxs: (N,) int group (class, or image·C + class),
    None for one group. Returns ``keep (K,)`` long indices into ``boxes`` and their
    decayed ``scores (K,)``, in decreasing order of decayed score (the classic loop's
    selection order within each group); boxes whose decayed score falls below
    ``score_threshold`` are dropped.
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"unknown Soft-NMS method '{method}' (choices: linear, gaussian)")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"Soft-NMS sigma must be > 0, got {sigma}")
    device = boxes.device
    if idxs is None:
        idxs = torch.zeros(len(boxes), dtype=torch.long, device=device)
    index = (scores >= score_threshold).nonzero().flatten()  # the working set
    work_boxes = boxes[index].float()
    current = scores[index].clone()
    groups = idxs[index]
    one_group = len(groups) == 0 or bool((groups == groups[0]).all())
    kept, kept_scores = [], []
    num_candidates = _CANDIDATES
    # The working set holds only boxes still in play (score >= score_threshold, not yet
    # selected): it is compacted after every step, so every top candidate is valid.
    while len(index):
        values, cand = current.topk(min(num_candidates, len(index)))
        # A candidate that no higher candidate of its group decays keeps its score until
        # the classic loop selects it, and it decays no higher candidate: select them all.
        pair_f = soft_nms_decay(
            _pair_iou(work_boxes[cand], work_boxes[cand]), method, iou_threshold, sigma
        )
        decays = pair_f < 1
        if not one_group:
            cand_groups = groups[cand]
            decays &= cand_groups[:, None] == cand_groups[None, :]
        take = ~decays.triu(1).any(dim=0)
        chosen = cand[take]
        if len(chosen) == len(cand):
            num_candidates = min(2 * num_candidates, _MAX_CANDIDATES)
        elif 4 * len(chosen) < len(cand):
            num_candidates = max(num_candidates // 2, _MIN_CANDIDATES)
        kept.append(index[chosen])
        kept_scores.append(values[take])
        # every selected box decays the boxes of its group (a product: order-free)
        f = soft_nms_decay(_pair_iou(work_boxes[chosen], work_boxes), method, iou_threshold, sigma)
        if not one_group:
            f = torch.where(groups[chosen][:, None] == groups[None, :], f, 1.0)
        current = current * f.prod(dim=0)
        live = current >= score_threshold
        live[chosen] = False
        index, work_boxes, current, groups = (
            index[live],
            work_boxes[live],
            current[live],
            groups[live],
        )
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=device), scores.new_zeros(0)
    keep = torch.cat(kept)
    kept_scores = torch.cat(kept_scores)
    order = kept_scores.argsort(descending=True, stable=True)
    return keep[order], kept_scores[order]
