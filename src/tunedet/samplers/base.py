"""The sampler contract and the batched pick-k-per-image primitive the samplers share.

A sampler (registry kind ``sampler``) chooses which assigned anchors enter the
classification loss: ``sample(assign_result, anchor_loss=None) -> (B, A) bool``, the
sampled positives and negatives (ignored anchors, ``matched == -1``, never). Samplers
with ``needs_loss = True`` (``ohem``, ``hard_negative``) rank by ``anchor_loss (B, A)``,
each anchor's current loss, detached. Counts are per image, as in the papers; all
images are sampled at once.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pick_per_image(candidates: Tensor, counts: Tensor, keys: Tensor | None = None) -> Tensor:
    """Choose ``counts[b]`` of the ``candidates (B, A)`` of each image → ``(B, A)`` bool.

    The ones with the largest ``keys (B, A)`` (e.g. the loss), or uniformly at random
    without replacement when ``keys`` is None (torch's global generator). An image with
    fewer candidates than asked gives all of them.
    """
    counts = counts.clamp(min=0)
    wanted = int(counts.max()) if counts.numel() else 0
    wanted = min(wanted, candidates.shape[1])
    if wanted == 0:
        return torch.zeros_like(candidates)
    if keys is None:
        keys = torch.rand(candidates.shape, device=candidates.device)
    else:
        keys = torch.nan_to_num(keys.detach().float(), nan=0.0, posinf=3e38, neginf=-3e38)
    keys = keys.masked_fill(~candidates, float("-inf"))
    top = keys.topk(wanted, dim=1)
    rank = torch.arange(wanted, device=candidates.device)
    keep = (rank < counts[:, None]) & (top.values > float("-inf"))
    chosen = torch.zeros_like(candidates)
    chosen.scatter_(1, top.indices, keep)
    return chosen


def cap_positives(positive: Tensor, num: int, pos_fraction: float) -> Tensor:
    """Per image, the number of positives to sample: ``min(#positives, int(num·pos_fraction))``."""
    return positive.sum(dim=1).clamp(max=int(num * pos_fraction))


def negative_budget(num: int, num_pos: Tensor, neg_pos_ub: float) -> Tensor:
    """Per image, negatives to sample: ``num − #pos``, at most ``neg_pos_ub · max(#pos, 1)``
    when ``neg_pos_ub ≥ 0``."""
    budget = num - num_pos
    if neg_pos_ub >= 0:
        budget = torch.minimum(budget, (neg_pos_ub * num_pos.clamp(min=1)).long())
    return budget
