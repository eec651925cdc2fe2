"""Random crops and expand: SSD's crop with a minimum IoU, expand (zoom out), and a plain
fixed-size random crop.

Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016, section 2.2
("Data augmentation"): a patch whose IoU with an object is at least one of
0.1, 0.3, 0.5, 0.7, 0.9 is cropped (objects whose centre is in the patch are
kept; as the authors' Caffe sampler, one object meeting the minimum is
enough), and the image is placed on a canvas up to 4× larger filled with the mean
(zoom out, which makes small objects).

``random_crop`` cuts a fixed-size window at a uniform random position, with the same
visible-fraction rule as tiling (`tunedet.data.tiling`): training on random windows of
large images instead of fixed tiles.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from tunedet.config.registry import register
from tunedet.data.tiling import crop_to_tile
from tunedet.data.transforms import clip_and_filter, keep_boxes, place


def patch_iou(patch: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``patch (4,) xyxy`` with ``boxes (N, 4) xyxy`` -> ``(N,)``."""
    lt = np.maximum(patch[:2], boxes[:, :2])
    rb = np.minimum(patch[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area_p = (patch[2] - patch[0]) * (patch[3] - patch[1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area_p + area_b - inter, 1e-12)


def crop_sample(sample: dict, patch: tuple[int, int, int, int], keep: np.ndarray) -> dict:
    """Cut ``patch = (x0, y0, x1, y1)`` (int px) out of the image and masks; keep the
    boxes selected by ``keep``, shifted into the patch (not yet clipped)."""
    x0, y0, x1, y1 = patch
    out = keep_boxes(sample, keep)
    out["image"] = np.ascontiguousarray(sample["image"][y0:y1, x0:x1])
    out["boxes"] = out["boxes"] - np.array([x0, y0, x0, y0], np.float32)
    if "masks" in out:
        out["masks"] = np.ascontiguousarray(out["masks"][:, y0:y1, x0:x1])
    return out


@register("transform", "min_iou_crop")
class MinIoURandomCrop:
    """SSD random crop: with probability ``p``, pick a minimum IoU from ``min_ious`` and
    try up to ``max_trials`` patches of side ``U(min_crop_size, 1)`` × the image side with
    aspect (h/w) in [0.5, 2]; a patch is taken when its IoU with at least one box reaches
    that minimum (SSD's Caffe sampler) and at least one box centre lies inside (any patch when the image has no
    box). Boxes whose centre is inside are kept, clipped to the patch, and dropped when
    narrower or lower than ``min_size`` px. No patch found: the sample is unchanged.
    """

    def __init__(
        self,
        p: Annotated[float, Field(ge=0, le=1)] = 1.0,
        min_ious: tuple[Annotated[float, Field(ge=0, le=1)], ...] = (0.1, 0.3, 0.5, 0.7, 0.9),
        min_crop_size: Annotated[float, Field(gt=0, le=1)] = 0.3,
        max_trials: Annotated[int, Field(ge=1)] = 50,
        min_size: Annotated[float, Field(ge=0)] = 1.0,
    ) -> None:
        if not min_ious:
            raise ValueError("min_iou_crop needs at least one value in min_ious")
        self.p = p
        self.min_ious = tuple(min_ious)
        self.min_crop_size = min_crop_size
        self.max_trials = max_trials
        self.min_size = min_size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        height, width = sample["image"].shape[:2]
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        min_iou = self.min_ious[int(rng.integers(len(self.min_ious)))]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(self.max_trials):
            w = round(rng.uniform(self.min_crop_size, 1.0) * width)
            h = round(rng.uniform(self.min_crop_size, 1.0) * height)
            if w < 1 or h < 1 or not 0.5 <= h / w <= 2.0:
                continue
            x0 = int(rng.integers(0, width - w + 1))
            y0 = int(rng.integers(0, height - h + 1))
            patch = np.array([x0, y0, x0 + w, y0 + h], np.float32)
            if len(boxes) and patch_iou(patch, boxes).max() < min_iou:
                continue
            inside = (
                (centres[:, 0] > patch[0])
                & (centres[:, 1] > patch[1])
                & (centres[:, 0] < patch[2])
                & (centres[:, 1] < patch[3])
            )
            if len(boxes) and not inside.any():
                continue
            cropped = crop_sample(sample, (x0, y0, x0 + w, y0 + h), inside)
            return clip_and_filter(cropped, self.min_size)
        return sample


@register("transform", "random_crop")
class RandomCrop:
    """With probability ``p``, a ``size`` × ``size`` window (each side capped at the
    image's) at a uniform random position. A box cut by the window edge is kept, clipped,
    when at least ``min_visible`` of its area is inside (tiling's rule), else dropped;
    then boxes narrower or lower than ``min_size`` px are dropped."""

    def __init__(
        self,
        size: Annotated[int, Field(ge=1)],
        p: Annotated[float, Field(ge=0, le=1)] = 1.0,
        min_visible: Annotated[float, Field(gt=0, le=1)] = 0.5,
        min_size: Annotated[float, Field(ge=0)] = 1.0,
    ) -> None:
        self.size = size
        self.p = p
        self.min_visible = min_visible
        self.min_size = min_size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        height, width = sample["image"].shape[:2]
        w, h = min(self.size, width), min(self.size, height)
        x0 = int(rng.integers(0, width - w + 1))
        y0 = int(rng.integers(0, height - h + 1))
        window = crop_to_tile(
            sample["boxes"], sample["labels"], (x0, y0, x0 + w, y0 + h), self.min_visible
        )
        cropped = crop_sample(sample, (x0, y0, x0 + w, y0 + h), window.index[window.keep])
        return clip_and_filter(cropped, self.min_size)


@register("transform", "expand")
class Expand:
    """SSD zoom out: with probability ``p``, place the image at a random position on a
    canvas ``r`` times its size, ``r ~ U(ratio_range)``, filled with ``fill`` (the
    ImageNet mean by default); boxes shift with the image, masks are zero-padded."""

    def __init__(
        self,
        p: Annotated[float, Field(ge=0, le=1)] = 0.5,
        ratio_range: tuple[Annotated[float, Field(ge=1)], Annotated[float, Field(ge=1)]] = (
            1.0,
            4.0,
        ),
        fill: tuple[int, int, int] = (124, 116, 104),
    ) -> None:
        if ratio_range[0] > ratio_range[1]:
            raise ValueError(f"expand ratio_range must be increasing, got {ratio_range}")
        self.p = p
        self.ratio_range = ratio_range
        self.fill = np.asarray(fill, np.uint8)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        image = sample["image"]
        height, width = image.shape[:2]
        ratio = rng.uniform(*self.ratio_range)
        new_h, new_w = round(height * ratio), round(width * ratio)
        left = int(rng.integers(0, new_w - width + 1))
        top = int(rng.integers(0, new_h - height + 1))
        canvas = np.empty((new_h, new_w, 3), np.uint8)
        canvas[:] = self.fill
        place(canvas, image, left, top)
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        out = {
            **sample,
            "image": canvas,
            "boxes": boxes + np.array([left, top, left, top], np.float32),
        }
        if "masks" in sample:
            masks = np.zeros((len(sample["masks"]), new_h, new_w), np.uint8)
            place(masks.transpose(1, 2, 0), sample["masks"].transpose(1, 2, 0), left, top)
            out["masks"] = masks
        return out
