"""Test-time augmentation: the detector on the image, its flips and rescaled copies,
detections merged.

Configured by ``eval.tta`` (`TTAConfig`): ``tunedet eval``, ``tunedet infer`` and the
trainer's evaluations wrap the detector in `FlipTTA`. Each flipped pass predicts on
the flipped (padded) batch; its boxes are flipped back, ``x -> W - x`` / ``y -> H - y``
with ``(H, W)`` the padded size, and clipped to the image. With ``scales``, every pass
(plain and flipped) runs once per scale on the batch resized by that factor (bilinear,
padded again to the size divisor) and its boxes are divided by the factor. The passes
are merged by

- ``nms``: class-wise NMS over the union of all passes (mmdetection's ``DetTTAModel``);
- ``vote``: the same NMS picks the boxes, and each kept box's score becomes the mean over
  the passes of the best score that pass gives a box of its class overlapping it with
  IoU >= ``iou_thr`` (0 where a pass has none). A crown every view finds keeps its
  score; one that a single view alone reports is down-weighted.
- ``wbf``: weighted boxes fusion (Solovyev et al. 2019, `weighted_boxes_fusion`): the
  boxes of a cluster are averaged, weighted by their scores, instead of all but one
  being dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from tunedet.boxes.formats import clip_boxes

if TYPE_CHECKING:
    from tunedet.config.schema import TTAConfig

FLIP_DIMS = {"h": (-1,), "v": (-2,), "hv": (-2, -1)}


def flip_boxes_back(boxes: Tensor, flip: str, height: int, width: int) -> Tensor:
    """Boxes (K, 4) xyxy predicted on a ``flip`` of an ``height`` x ``width`` image,
    in the unflipped image's pixels."""
    out = boxes.clone()
    if "h" in flip:
        out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    if "v" in flip:
        out[:, 1], out[:, 3] = height - boxes[:, 3], height - boxes[:, 1]
    return out


def _clip_to_image(pred: dict[str, Tensor], height: int, width: int) -> dict[str, Tensor]:
    boxes = clip_boxes(pred["boxes"], (height, width))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {"boxes": boxes[keep], "scores": pred["scores"][keep], "labels": pred["labels"][keep]}


def vote_scores(
    boxes: Tensor, labels: Tensor, passes: list[dict[str, Tensor]], iou_thr: float
) -> Tensor:
    """Mean over ``passes`` of the best score each gives a same-label box with IoU >=
    ``iou_thr`` to ``boxes`` (0 where none): (K,)."""
    total = boxes.new_zeros(len(boxes))
    for other in passes:
        if len(other["boxes"]) == 0 or len(boxes) == 0:
            continue
        match = (box_iou(boxes, other["boxes"]) >= iou_thr) & (
            labels[:, None] == other["labels"][None, :]
        )
        total += torch.where(match, other["scores"][None, :], 0.0).amax(dim=1)
    return total / len(passes)


def weighted_boxes_fusion(passes: list[dict[str, Tensor]], iou_thr: float) -> dict[str, Tensor]:
    """Weighted boxes fusion (Solovyev et al. 2019) of ``T = len(passes)`` predictions.

    Boxes of all passes, by decreasing score, join the first-best fused box of their
    label with IoU > ``iou_thr`` (else they open a new cluster); a cluster's fused box is
    ``Σ sᵢ·boxᵢ / Σ sᵢ`` and its score ``mean(sᵢ) · min(n, T) / T`` (n: cluster size), so
    a box that few passes report is down-weighted. Returns ``boxes`` (K, 4), ``scores``
    (K,), ``labels`` (K,) by decreasing score.
    """
    boxes = torch.cat([p["boxes"] for p in passes])
    scores = torch.cat([p["scores"] for p in passes])
    labels = torch.cat([p["labels"] for p in passes])
    order = scores.argsort(descending=True, stable=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    n = len(boxes)
    weighted_sum = boxes.new_zeros(n, 4)  # Σ sᵢ·boxᵢ per cluster
    score_sum = scores.new_zeros(n)
    count = scores.new_zeros(n)
    fused = boxes.new_zeros(n, 4)
    fused_labels = labels.new_full((n,), -1)
    clusters = 0
    for k in range(n):
        best = -1
        if clusters:
            iou = box_iou(boxes[k : k + 1], fused[:clusters])[0]
            iou = torch.where(fused_labels[:clusters] == labels[k], iou, -1.0)
            value, index = iou.max(dim=0)
            if value > iou_thr:
                best = int(index)
        if best < 0:
            best = clusters
            clusters += 1
            fused_labels[best] = labels[k]
        weighted_sum[best] += scores[k] * boxes[k]
        score_sum[best] += scores[k]
        count[best] += 1
        fused[best] = weighted_sum[best] / score_sum[best].clamp(min=torch.finfo(boxes.dtype).tiny)
    total = len(passes)
    out_scores = score_sum[:clusters] / count[:clusters] * count[:clusters].clamp(max=total) / total
    order = out_scores.argsort(descending=True, stable=True)
    return {
        "boxes": fused[:clusters][order],
        "scores": out_scores[order],
        "labels": fused_labels[:clusters][order],
    }


def merge_passes(
    passes: list[dict[str, Tensor]], merge: str, iou_thr: float, max_dets: int
) -> dict[str, Tensor]:
    """One image's detections from several passes (already in its pixels) -> one set."""
    if merge == "wbf":
        fused = weighted_boxes_fusion(passes, iou_thr)
        return {k: v[:max_dets] for k, v in fused.items()}
    boxes = torch.cat([p["boxes"] for p in passes])
    scores = torch.cat([p["scores"] for p in passes])
    labels = torch.cat([p["labels"] for p in passes])
    keep = batched_nms(boxes, scores, labels, iou_thr)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if merge == "vote":
        scores = vote_scores(boxes, labels, passes, iou_thr)
        order = scores.argsort(descending=True, stable=True)
        boxes, scores, labels = boxes[order], scores[order], labels[order]
    return {"boxes": boxes[:max_dets], "scores": scores[:max_dets], "labels": labels[:max_dets]}


def rescale_batch(images: Tensor, scale: float, size_divisor: int) -> tuple[Tensor, float, float]:
    """A padded batch (B, 3, H, W) resized by ``scale`` (bilinear) and zero-padded to a
    multiple of ``size_divisor`` -> (batch, sy, sx), the factors actually applied."""
    height, width = images.shape[-2:]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False)
    pad_h = -new_h % size_divisor
    pad_w = -new_w % size_divisor
    return F.pad(resized, (0, pad_w, 0, pad_h)), new_h / height, new_w / width


class FlipTTA:
    """``predict`` of ``detector`` on the images and their ``flips`` ("h", "v", "hv"),
    each at every one of ``scales``, merged per image (module docstring). Box detectors
    only (no masks)."""

    def __init__(
        self,
        detector: Any,
        flips: list[str],
        merge: str = "vote",
        iou_thr: float = 0.5,
        max_dets: int = 300,
        scales: list[float] | None = None,
        size_divisor: int = 32,
    ) -> None:
        unknown = [f for f in flips if f not in FLIP_DIMS]
        if unknown:
            raise ValueError(f"eval.tta.flips: unknown flip {unknown[0]!r} (h, v, hv)")
        if merge not in ("nms", "vote", "wbf"):
            raise ValueError(f"eval.tta.merge: unknown merge {merge!r} (nms, vote, wbf)")
        if getattr(detector, "needs_masks", False):
            raise ValueError("eval.tta merges boxes, not masks: set eval.tta=null")
        self.detector = detector
        self.flips = list(flips)
        self.merge = merge
        self.iou_thr = iou_thr
        self.max_dets = max_dets
        self.scales = list(scales) if scales else [1.0]
        self.size_divisor = size_divisor

    def __getattr__(self, name: str) -> Any:  # classes, num_classes, ... of the detector
        if name == "detector":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.detector, name)

    def eval(self) -> FlipTTA:
        self.detector.eval()
        return self

    def _passes_at(self, images: Tensor, image_sizes: Tensor) -> list[list[dict[str, Tensor]]]:
        """The plain and flipped passes on one (padded) batch, boxes in its pixels."""
        height, width = images.shape[-2:]
        padded = torch.tensor([height, width], device=image_sizes.device)
        padded = padded.expand_as(image_sizes)
        per_pass = [self.detector.predict(images, image_sizes)]
        for flip in self.flips:
            # the content sits at the far side of a flipped padded batch: predict on all of it
            preds = self.detector.predict(images.flip(FLIP_DIMS[flip]), padded)
            per_pass.append(
                [{**p, "boxes": flip_boxes_back(p["boxes"], flip, height, width)} for p in preds]
            )
        return per_pass

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W) padded; image_sizes: (B, 2) (h, w) -> per image
        ``boxes``, ``scores``, ``labels`` (the detector's format)."""
        per_pass = []
        for scale in self.scales:
            if scale == 1.0:
                per_pass += self._passes_at(images, image_sizes)
                continue
            scaled, sy, sx = rescale_batch(images, scale, self.size_divisor)
            factors = image_sizes.new_tensor([sy, sx], dtype=torch.float64)
            sizes = (image_sizes * factors).floor().long().clamp(min=1)
            back = torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
            for preds in self._passes_at(scaled, sizes):
                per_pass.append([{**p, "boxes": p["boxes"] / back.to(p["boxes"])} for p in preds])
        merged = []
        for i, (h, w) in enumerate(image_sizes.tolist()):
            passes = [_clip_to_image(preds[i], h, w) for preds in per_pass]
            merged.append(merge_passes(passes, self.merge, self.iou_thr, self.max_dets))
        return merged


def with_tta(detector: Any, tta: TTAConfig | None, size_divisor: int = 32) -> Any:
    """``detector`` wrapped in `FlipTTA` with the settings of ``tta`` (``eval.tta``) when
    it is set, else ``detector`` itself; ``size_divisor``: ``data.size_divisor``."""
    if tta is None:
        return detector
    return FlipTTA(
        detector,
        tta.flips,
        tta.merge,
        tta.iou_thr,
        tta.max_dets,
        scales=tta.scales,
        size_divisor=size_divisor,
    )
