"""Transforms that mix several images: Mosaic, MixUp, copy-paste.

They read other raw samples through the ``_fetch`` context key that
`TransformedDataset` sets, drawing the indices from the sample's ``rng``
(``rng.integers(_num_samples)``), so a sample's result is still a pure function
of ``(seed, epoch, index)`` and a resumed run is exact. The other samples are
raw (before any transform); put mixing transforms first in the list. After
mixing, ``scale`` and ``orig_size`` are still the first image's from before
the mix (meaningless for the mixed image; training does not use them).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from tunedet.config.registry import register
from tunedet.data.transforms import (
    clip_and_filter,
    place,
    resize_image,
    resize_masks,
    resize_sample,
)


def fetch_other(sample: dict, rng: np.random.Generator, name: str) -> dict:
    """One other raw sample, its index drawn from ``rng``."""
    fetch = sample.get("_fetch")
    if fetch is None:
        raise ValueError(
            f"transform '{name}' mixes several images and needs the '_fetch' context key: "
            "use it through TransformedDataset (data.train_transforms)"
        )
    return dict(fetch(int(rng.integers(int(sample["_num_samples"])))))


def has_masks(samples: list[dict], name: str) -> bool:
    """True when the samples carry ``masks``; ValueError naming transform ``name`` when
    only some of them do."""
    flags = {"masks" in s for s in samples}
    if len(flags) > 1:
        raise ValueError(f"transform '{name}': some samples have masks and some do not")
    return flags.pop()


@register("transform", "mosaic")
class Mosaic:
    """Mosaic (YOLOv4, Bochkovskiy et al. 2020): with probability ``p``, four images
    (this one and three drawn from the dataset) each resized so its longer side is
    ``size / 2`` and placed around a centre ``(cx, cy) ~ U(center_range) × size`` of a
    ``size × size`` canvas filled with ``fill`` -- top-left, top-right, bottom-left,
    bottom-right, each touching the centre. Parts outside the canvas are cut; boxes
    are clipped and dropped below ``min_size`` px (with labels and masks)."""

    def __init__(
        self,
        size: Annotated[int, Field(ge=8)],
        p: Annotated[float, Field(ge=0, le=1)] = 1.0,
        center_range: tuple[
            Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]
        ] = (0.25, 0.75),
        fill: Annotated[int, Field(ge=0, le=255)] = 114,
        min_size: Annotated[float, Field(ge=0)] = 2.0,
    ) -> None:
        if center_range[0] > center_range[1]:
            raise ValueError(f"mosaic center_range must be increasing, got {center_range}")
        self.size = size
        self.p = p
        self.center_range = center_range
        self.fill = fill
        self.min_size = min_size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        parts = [sample] + [fetch_other(sample, rng, "mosaic") for _ in range(3)]
        masked = has_masks(parts, "mosaic")
        s = self.size
        cx, cy = (round(v * s) for v in rng.uniform(*self.center_range, size=2))
        canvas = np.full((s, s, 3), self.fill, np.uint8)
        boxes, labels, masks = [], [], []
        for k, part in enumerate(parts):
            height, width = part["image"].shape[:2]
            part = resize_sample(part, (s / 2) / max(height, width))
            h, w = part["image"].shape[:2]
            x = cx - w if k in (0, 2) else cx
            y = cy - h if k in (0, 1) else cy
            place(canvas, part["image"], x, y)
            shifted = np.asarray(part["boxes"], np.float32).reshape(-1, 4)
            boxes.append(shifted + np.array([x, y, x, y], np.float32))
            labels.append(np.asarray(part["labels"], np.int64))
            if masked:
                m = np.zeros((len(part["masks"]), s, s), np.uint8)
                place(m.transpose(1, 2, 0), part["masks"].transpose(1, 2, 0), x, y)
                masks.append(m)
        out = {
            **sample,
            "image": canvas,
            "boxes": np.concatenate(boxes),
            "labels": np.concatenate(labels),
        }
        if masked:
            out["masks"] = np.concatenate(masks)
        return clip_and_filter(out, self.min_size)


@register("transform", "mixup")
class MixUp:
    """MixUp for detection (Zhang et al., "Bag of Freebies for Training Object Detection
    Neural Networks", 2019): with probability ``p``, blend this image with another,
    ``λ · this + (1 - λ) · other``, ``λ ~ Beta(alpha, alpha)``. The other image is
    resized keeping its ratio to fit inside this one and put at the top-left of a
    canvas of this image's size filled with ``fill``. The targets are the union of both
    images' boxes, unweighted -- what mmdetection's and YOLOX's MixUp do (the paper
    weights each box's loss by its image's λ); boxes of the other image below
    ``min_size`` px after resizing are dropped. λ is recorded as ``mixup_lambda``."""

    def __init__(
        self,
        p: Annotated[float, Field(ge=0, le=1)] = 0.5,
        alpha: Annotated[float, Field(gt=0)] = 1.5,
        fill: Annotated[int, Field(ge=0, le=255)] = 114,
        min_size: Annotated[float, Field(ge=0)] = 1.0,
    ) -> None:
        self.p = p
        self.alpha = alpha
        self.fill = fill
        self.min_size = min_size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        other = fetch_other(sample, rng, "mixup")
        lam = rng.beta(self.alpha, self.alpha)
        masked = has_masks([sample, other], "mixup")
        image = sample["image"]
        height, width = image.shape[:2]
        oh, ow = other["image"].shape[:2]
        other = clip_and_filter(resize_sample(other, min(height / oh, width / ow)), self.min_size)
        canvas = np.full_like(image, self.fill)
        place(canvas, other["image"], 0, 0)
        mixed = lam * image.astype(np.float32) + (1.0 - lam) * canvas.astype(np.float32)
        out = {
            **sample,
            "image": np.clip(np.rint(mixed), 0, 255).astype(np.uint8),
            "boxes": np.concatenate(
                [np.asarray(sample["boxes"], np.float32).reshape(-1, 4), other["boxes"]]
            ),
            "labels": np.concatenate([np.asarray(sample["labels"], np.int64), other["labels"]]),
            "mixup_lambda": float(lam),
        }
        if masked:
            m = np.zeros((len(other["masks"]), height, width), np.uint8)
            place(m.transpose(1, 2, 0), other["masks"].transpose(1, 2, 0), 0, 0)
            out["masks"] = np.concatenate([sample["masks"], m])
        return out


def mask_tight_boxes(masks: np.ndarray) -> np.ndarray:
    """``(N, 4) float32`` xyxy boxes of the nonzero pixels of ``masks (N, H, W)`` (each
    non-empty): first column / row, and last + 1."""
    height, width = masks.shape[1:]
    cols, rows = masks.any(axis=1), masks.any(axis=2)
    x0, y0 = cols.argmax(axis=1), rows.argmax(axis=1)
    x1, y1 = width - cols[:, ::-1].argmax(axis=1), height - rows[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


def _int_region(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels a float xyxy box touches: ``floor`` of the start, ``ceil`` of the end."""
    x0, y0 = int(np.floor(max(box[0], 0))), int(np.floor(max(box[1], 0)))
    x1, y1 = int(np.ceil(min(box[2], width))), int(np.ceil(min(box[3], height)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


@register("transform", "copy_paste")
class CopyPaste:
    """Simple copy-paste (Ghiasi et al., CVPR 2021): with probability ``p``, paste
    ``1..max_objects`` objects of another image at uniform random positions of this
    one -- the pixels of their masks when the samples have masks, else their box
    crops (scaled down to fit when larger than this image). Later pastes cover earlier
    ones. Every object, old or pasted, whose visible fraction (uncovered mask pixels,
    or uncovered box pixels without masks) falls below ``min_visible`` is dropped with
    its label and mask; covered mask pixels are cleared and, as in the paper, the box of
    a partly covered object becomes the tight box of its visible mask (without masks
    boxes are kept as they were)."""

    def __init__(
        self,
        p: Annotated[float, Field(ge=0, le=1)] = 0.5,
        max_objects: Annotated[int, Field(ge=1)] = 10,
        min_visible: Annotated[float, Field(ge=0, le=1)] = 0.3,
        min_size: Annotated[float, Field(ge=0)] = 2.0,
    ) -> None:
        self.p = p
        self.max_objects = max_objects
        self.min_visible = min_visible
        self.min_size = min_size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        other = fetch_other(sample, rng, "copy_paste")
        masked = has_masks([sample, other], "copy_paste")
        other_boxes = np.asarray(other["boxes"], np.float32).reshape(-1, 4)
        n = len(other_boxes)
        if n == 0:
            return sample
        count = int(rng.integers(1, min(self.max_objects, n) + 1))
        chosen = rng.choice(n, size=count, replace=False)
        image = sample["image"].copy()
        height, width = image.shape[:2]
        oh, ow = other["image"].shape[:2]
        owner = np.full((height, width), -1, np.int32)  # index of the paste on top, -1 none
        pasted_boxes, pasted_masks = [], []
        for t, j in enumerate(chosen):
            x0, y0, x1, y1 = _int_region(other_boxes[j], ow, oh)
            crop = other["image"][y0:y1, x0:x1]
            cmask = other["masks"][j, y0:y1, x0:x1] if masked else np.ones(crop.shape[:2], np.uint8)
            ch, cw = crop.shape[:2]
            if ch > height or cw > width:
                fit = min(height / ch, width / cw)
                cw, ch = max(1, int(cw * fit)), max(1, int(ch * fit))
                crop = resize_image(np.ascontiguousarray(crop), cw, ch)
                cmask = resize_masks(cmask[None], cw, ch)[0]
            px, py = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
            on = cmask > 0
            image[py : py + ch, px : px + cw][on] = crop[on]
            owner[py : py + ch, px : px + cw][on] = t
            full = np.zeros((height, width), np.uint8)
            full[py : py + ch, px : px + cw] = np.where(on, cmask, 0)
            pasted_masks.append(full)
            if masked and on.any():
                rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
                box = [px + cols[0], py + rows[0], px + cols[-1] + 1, py + rows[-1] + 1]
            else:
                box = [px, py, px + cw, py + ch]
            pasted_boxes.append(box)

        free = owner < 0
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        if masked:
            old_masks = sample["masks"]
            before = (old_masks > 0).sum(axis=(1, 2))
            old_masks = old_masks * free[None].astype(np.uint8)
            after = (old_masks > 0).sum(axis=(1, 2))
        else:
            after = np.array(
                [
                    free[y0:y1, x0:x1].sum()
                    for x0, y0, x1, y1 in (_int_region(b, width, height) for b in boxes)
                ]
            )
            before = np.array(
                [
                    (x1 - x0) * (y1 - y0)
                    for x0, y0, x1, y1 in (_int_region(b, width, height) for b in boxes)
                ]
            )
        new_masks = np.stack(pasted_masks)
        new_before = (new_masks > 0).sum(axis=(1, 2))
        new_masks = new_masks * (owner[None] == np.arange(count)[:, None, None]).astype(np.uint8)
        new_after = (new_masks > 0).sum(axis=(1, 2))
        visible = np.concatenate(
            [after / np.maximum(before, 1), new_after / np.maximum(new_before, 1)]
        )
        keep = visible >= self.min_visible - 1e-9
        all_boxes = np.concatenate([boxes, np.asarray(pasted_boxes, np.float32).reshape(-1, 4)])
        if masked:
            all_masks = np.concatenate([old_masks, new_masks])
            shrunk = (visible < 1.0) & (np.concatenate([after, new_after]) > 0)
            all_boxes[shrunk] = mask_tight_boxes(all_masks[shrunk])
        out = {
            **sample,
            "image": image,
            "boxes": all_boxes[keep],
            "labels": np.concatenate(
                [
                    np.asarray(sample["labels"], np.int64),
                    np.asarray(other["labels"], np.int64)[chosen],
                ]
            )[keep],
        }
        if masked:
            out["masks"] = all_masks[keep]
        return clip_and_filter(out, self.min_size)
