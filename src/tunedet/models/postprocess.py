"""From dense head outputs to final detections: score threshold, top-k, decode, clip, NMS."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from tunedet.boxes.nms import batched_soft_nms

NMSType = Literal["hard", "soft_linear", "soft_gaussian"]


def postprocess_detections(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    num_anchors_per_level: list[int],
    box_coder,
    image_sizes: Tensor,
    score_thr: float = 0.05,
    pre_nms_topk: int = 1000,
    nms_iou: float | None = 0.5,
    max_dets: int = 100,
    score_factors: Tensor | None = None,
    nms_type: NMSType = "hard",
    soft_nms_sigma: float = 0.5,
) -> list[dict[str, Tensor]]:
    """Detections per image from sigmoid class logits and box deltas (RetinaNet style).

    cls_logits: (B, A, C); box_deltas: (B, A, 4); anchors: (A, 4) xyxy px, levels
    concatenated in order of ``num_anchors_per_level``; image_sizes: (B, 2) (h, w).

    Per level and image, the ``pre_nms_topk`` best (anchor, class) pairs with
    sigmoid score > ``score_thr`` are kept; only those are decoded, clipped to the
    image and passed to class-wise NMS at ``nms_iou`` (one ``batched_nms`` call for
    the whole batch, grouped by (image, class)); the ``max_dets`` best remain.
    ``nms_type`` "soft_linear" / "soft_gaussian" replaces hard NMS by batched Soft-NMS
    (``boxes/nms.py``: linear decay above ``nms_iou``, Gaussian with ``soft_nms_sigma``),
    dropping boxes whose decayed score falls below ``score_thr``; scores are the decayed ones.
    ``score_factors (B, A)`` probabilities (FCOS/ATSS centerness) make the score
    ``sqrt(sigmoid(logit) · factor)`` before the threshold and top-k; ``nms_iou=None``
    skips NMS (set-prediction heads trained one-to-one): the best ``max_dets`` remain.
    Returns one dict per image: ``boxes (K, 4)`` xyxy, ``scores (K,)``, ``labels (K,)``.
    """
    num_images, _, num_classes = cls_logits.shape
    scores, pair_index = [], []
    start = 0
    for count in num_anchors_per_level:
        level_scores = cls_logits[:, start : start + count].sigmoid()
        if score_factors is not None:
            level_scores = (level_scores * score_factors[:, start : start + count, None]).sqrt()
        level_scores = level_scores.flatten(1)  # (B, A_l·C)
        k = min(pre_nms_topk, level_scores.shape[1])
        top = level_scores.topk(k, dim=1)
        scores.append(top.values)
        pair_index.append(top.indices + start * num_classes)
        start += count
    scores = torch.cat(scores, dim=1)  # (B, K)
    pair_index = torch.cat(pair_index, dim=1)

    image_index, slot = (scores > score_thr).nonzero(as_tuple=True)
    scores = scores[image_index, slot]
    pair_index = pair_index[image_index, slot]
    anchor_index = pair_index // num_classes
    labels = pair_index % num_classes

    boxes = box_coder.decode(anchors[anchor_index], box_deltas[image_index, anchor_index])
    sizes = image_sizes.to(boxes)[image_index]  # (N, 2) (h, w)
    limits = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=1)
    boxes = torch.minimum(boxes.clamp(min=0), limits)

    groups = image_index * num_classes + labels
    if nms_iou is None:
        keep = scores.argsort(descending=True)
    elif nms_type == "hard":
        keep = batched_nms(boxes, scores, groups, nms_iou)
    else:
        method = "linear" if nms_type == "soft_linear" else "gaussian"
        keep, soft_scores = batched_soft_nms(
            boxes, scores, groups, method, nms_iou, soft_nms_sigma, score_thr
        )
        scores = scores.clone()
        scores[keep] = soft_scores
    return split_per_image(boxes, scores, labels, image_index, keep, num_images, max_dets)


def split_per_image(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    image_index: Tensor,
    keep: Tensor,
    num_images: int,
    max_dets: int,
) -> list[dict[str, Tensor]]:
    """The kept candidates of a batch as one dict per image, each capped at ``max_dets``.

    ``boxes (N, 4)``, ``scores (N,)``, ``labels (N,)`` and ``image_index (N,)`` describe all
    candidates; ``keep`` indexes the survivors in decreasing score order (as NMS returns them).
    """
    # keep is sorted by decreasing score; a stable sort by image keeps that order per image
    keep = keep[image_index[keep].sort(stable=True).indices]
    kept_images = image_index[keep]
    counts = torch.bincount(kept_images, minlength=num_images)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(keep), device=keep.device) - first[kept_images]
    keep = keep[rank < max_dets]
    counts = counts.clamp(max=max_dets).tolist()

    return [
        {"boxes": b, "scores": s, "labels": lab}
        for b, s, lab in zip(
            boxes[keep].split(counts),
            scores[keep].split(counts),
            labels[keep].split(counts),
            strict=True,
        )
    ]
