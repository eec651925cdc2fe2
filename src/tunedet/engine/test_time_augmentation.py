"""Test-time augmentation: the detector on the image and on its flips, detections merged.

Configured by ``eval.tta`` (`TTAConfig`): ``tunedet eval``, ``tunedet infer`` and the
trainer's evaluations wrap the detector in `FlipTTA`. Each flipped pass predicts on
the flipped (padded) batch; its boxes are flipped back, ``x -> W - x`` / ``y -> H - y``
with ``(H, W)`` the padded size, and clipped to the image. The passes are merged by

- ``nms``: class-wise NMS over the union of all passes (mmdetection's ``DetTTAModel``);
- ``vote``: the same NMS picks the boxes, and each kept box's score becomes the mean over
  the passes of the best score that pass gives a box of its class overlapping it with
  IoU >= ``iou_thr`` (0 where a pass has none). A crown every view finds keeps its
  score; one that a single view alone reports is down-weighted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from tunedet.boxes.formats import clip_boxes

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


def merge_passes(
    passes: list[dict[str, Tensor]], merge: str, iou_thr: float, max_dets: int
) -> dict[str, Tensor]:
    """One image's detections from several passes (already in its pixels) -> one set."""
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


class FlipTTA:
    """``predict`` of ``detector`` on the images and their ``flips`` ("h", "v", "hv"),
    merged per image (module docstring). Box detectors only (no masks)."""

    def __init__(
        self,
        detector: Any,
        flips: list[str],
        merge: str = "vote",
        iou_thr: float = 0.5,
        max_dets: int = 300,
    ) -> None:
        unknown = [f for f in flips if f not in FLIP_DIMS]
        if unknown:
            raise ValueError(f"eval.tta.flips: unknown flip {unknown[0]!r} (h, v, hv)")
        if getattr(detector, "needs_masks", False):
            raise ValueError("eval.tta merges boxes, not masks: set eval.tta=null")
        self.detector = detector
        self.flips = list(flips)
        self.merge = merge
        self.iou_thr = iou_thr
        self.max_dets = max_dets

    def __getattr__(self, name: str) -> Any:  # classes, num_classes, ... of the detector
        if name == "detector":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.detector, name)

    def eval(self) -> FlipTTA:
        self.detector.eval()
        return self

    @torch.no_grad()
    def predict(self, images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        """images: (B, 3, H, W) padded; image_sizes: (B, 2) (h, w) -> per image
        ``boxes``, ``scores``, ``labels`` (the detector's format)."""
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
        merged = []
        for i, (h, w) in enumerate(image_sizes.tolist()):
            passes = [_clip_to_image(preds[i], h, w) for preds in per_pass]
            merged.append(merge_passes(passes, self.merge, self.iou_thr, self.max_dets))
        return merged


def with_tta(detector: Any, cfg: Any) -> Any:
    """``detector`` wrapped in `FlipTTA` when ``cfg.eval.tta`` is set, else itself."""
    tta = cfg.eval.tta
    if tta is None:
        return detector
    return FlipTTA(detector, tta.flips, tta.merge, tta.iou_thr, tta.max_dets)
