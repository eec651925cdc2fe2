"""CornerNet's targets and losses (Law & Deng, 2018): Gaussian corner heatmaps, the
penalty-reduced focal loss, and the associative-embedding pull/push losses.

Heatmap targets: each GT corner is the peak (1) of an unnormalised Gaussian
``exp(−(dx² + dy²) / 2σ²)``, ``σ = (2r + 1)/6``, cut at ``|dx|, |dy| ≤ r``, where ``r``
(``gaussian_radius``) is the largest corner shift that keeps the box's IoU with the GT
≥ ``min_overlap`` in each of the three ways both corners can move (CornerNet §3.2);
overlapping Gaussians of one class take their maximum.

Focal loss with penalty reduction (eq. 1), ``p`` the predicted probability, ``y`` the target:

    L_det = −1/N Σ { (1 − p)^α log p              if y = 1
                   { (1 − y)^β p^α log(1 − p)      otherwise

(``α = 2``, ``β = 4``; ``N`` objects): negatives near a corner are penalised less.

Embeddings (eqs. 4–5), ``e_k = (e_tl,k + e_br,k)/2`` over the ``N`` objects of an image:

    L_pull = 1/N Σ_k (e_tl,k − e_k)² + (e_br,k − e_k)²
    L_push = 1/(N(N − 1)) Σ_k Σ_{j≠k} max(0, Δ − |e_k − e_j|)      (Δ = 1)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.3) -> Tensor:
    """The corner radius ``r`` (same shape as ``height``/``width``) below which a box with
    both corners moved by ``r`` (per axis) still has IoU ≥ ``min_overlap`` with the GT:
    the smallest of the three cases' roots of ``IoU(r) = min_overlap``:

    - one corner inside, one outside (the box shifted by ``(r, r)``):
      ``(w − r)(h − r) / (2wh − (w − r)(h − r)) = o``;
    - both inside (the box shrunk by ``r`` per side): ``(w − 2r)(h − 2r) / wh = o``;
    - both outside (grown by ``r`` per side): ``wh / ((w + 2r)(h + 2r)) = o``.

    (The reference code solves the same quadratics but divides by 2 instead of ``2a``.)
    """
    o = min_overlap
    h, w = height.double(), width.double()
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 - (b1**2 - 4 * c1).clamp(min=0).sqrt()) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 - (b2**2 - 16 * c2).clamp(min=0).sqrt()) / 8
    a3, b3, c3 = 4 * o, 2 * o * (h + w), (o - 1) * w * h
    r3 = (-b3 + (b3**2 - 4 * a3 * c3).clamp(min=0).sqrt()) / (2 * a3)
    return torch.minimum(torch.minimum(r1, r2), r3).to(height.dtype)


def corner_heatmap_targets(
    corners: Tensor,
    radius: Tensor,
    labels: Tensor,
    num_classes: int,
    height: int,
    width: int,
) -> Tensor:
    """corners: (B, M, 2) integer (x, y) cells; radius: (B, M) ≥ 0 integer; labels: (B, M)
    with -1 padding → (B, num_classes, height, width): the max over each class's GTs of
    ``exp(−(dx² + dy²)/2σ²)``, ``σ = (2r + 1)/6``, zero beyond ``r`` cells per axis."""
    device = corners.device
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, 1, height, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, 1, width)
    dx = xs - corners[..., 0, None, None].float()
    dy = ys - corners[..., 1, None, None].float()
    r = radius.float()[..., None, None]
    sigma = (2 * r + 1) / 6
    gaussian = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    gaussian = gaussian * ((dx.abs() <= r) & (dy.abs() <= r))  # (B, M, H, W)
    valid = labels >= 0
    one_hot = torch.zeros(*labels.shape, num_classes, device=device)
    one_hot[valid] = torch.nn.functional.one_hot(labels[valid], num_classes).float()
    per_class = one_hot[..., None, None] * gaussian[:, :, None]  # (B, M, C, H, W)
    if per_class.shape[1] == 0:
        return per_class.new_zeros(labels.shape[0], num_classes, height, width)
    return per_class.amax(dim=1)


def penalty_reduced_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 2.0, beta: float = 4.0
) -> Tensor:
    """Element-wise CornerNet focal loss (eq. 1 without the ``1/N``): ``logits`` and
    Gaussian ``targets`` of the same shape; positives are the cells with target 1."""
    log_p = torch.nn.functional.logsigmoid(logits)
    log_not_p = torch.nn.functional.logsigmoid(-logits)
    p = log_p.exp()
    positive = targets.eq(1)
    pos_loss = -((1 - p) ** alpha) * log_p
    neg_loss = -((1 - targets) ** beta) * p**alpha * log_not_p
    return torch.where(positive, pos_loss, neg_loss)


def associative_embedding_loss(
    tl_embed: Tensor, br_embed: Tensor, valid: Tensor, margin: float = 1.0
) -> tuple[Tensor, Tensor]:
    """tl_embed, br_embed: (B, M) the embeddings at each GT's two corners; valid: (B, M).
    Returns (pull, push), each summed over the images of their per-image values (eqs. 4–5;
    an image with fewer than two objects has no push term)."""
    valid = valid.to(tl_embed.dtype)
    count = valid.sum(dim=1)  # (B,)
    mean = (tl_embed + br_embed) / 2
    pull = (((tl_embed - mean) ** 2 + (br_embed - mean) ** 2) * valid).sum(dim=1)
    pull = pull / count.clamp(min=1)
    pairs = valid[:, :, None] * valid[:, None, :]
    pairs = pairs * (1 - torch.eye(valid.shape[1], device=valid.device, dtype=valid.dtype))
    gaps = (margin - (mean[:, :, None] - mean[:, None, :]).abs()).clamp(min=0)
    push = (gaps * pairs).sum(dim=(1, 2)) / (count * (count - 1)).clamp(min=1)
    return pull.sum(), push.sum()


def focal_prior_bias(prior_prob: float) -> float:
    """``−log((1 − π)/π)``: the logit bias that starts every cell at probability ``π``."""
    return -math.log((1 - prior_prob) / prior_prob)
