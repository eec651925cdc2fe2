"""Transforms that mix rectangular patches of several images: RICAP and CutMix.

Box-aware versions of two classification augmentations: a box keeps the part of it
that stays visible (clipped to its patch, or trimmed where a cut covers one side of
it) and is dropped, with its label and mask, when less than ``min_visible`` of its area
remains. Like Mosaic and MixUp (`tunedet.data.mixing`), the other images are raw samples
fetched through ``_fetch`` with indices drawn from the sample's ``rng``, so a sample's
result is a pure function of ``(seed, epoch, index)`` and a resumed run is exact.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from tunedet.config.registry import register
from tunedet.data.mixing import fetch_other, has_masks
from tunedet.data.transforms import clip_and_filter, resize_sample


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


def clip_to_window(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """``boxes (N, 4) xyxy`` intersected with the rectangle ``window`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = window
    out = boxes.copy()
    out[:, 0::2] = out[:, 0::2].clip(x0, x1)
    out[:, 1::2] = out[:, 1::2].clip(y0, y1)
    return out


def trim_by_cut(boxes: np.ndarray, cut: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """What remains visible of ``boxes (N, 4)`` once the rectangle ``cut`` covers them:
    (boxes, visible areas). A cut spanning a box's whole height (width) that covers its
    left or right (top or bottom) end moves that side to the cut's edge, the visible
    part being a rectangle; any other overlap leaves the box as it was (its visible part
    is not a rectangle). Visible area = box area − area of box ∩ cut."""
    x0, y0, x1, y1 = cut
    inter = _areas(clip_to_window(boxes, cut))
    visible = _areas(boxes) - inter
    out = boxes.copy()
    spans_y = (y0 <= boxes[:, 1]) & (y1 >= boxes[:, 3])
    spans_x = (x0 <= boxes[:, 0]) & (x1 >= boxes[:, 2])
    left = spans_y & (x0 <= boxes[:, 0]) & (x1 > boxes[:, 0])
    right = spans_y & (x1 >= boxes[:, 2]) & (x0 < boxes[:, 2])
    top = spans_x & (y0 <= boxes[:, 1]) & (y1 > boxes[:, 1])
    bottom = spans_x & (y1 >= boxes[:, 3]) & (y0 < boxes[:, 3])
    out[left, 0] = x1
    out[right, 2] = x0
    out[top, 1] = y1
    out[bottom, 3] = y0
    return out, visible


@register("transform", "ricap")
class RICAP:
    """RICAP (Takahashi et al. 2018): with probability ``p``, a ``size × size`` image made
    of four patches -- of this image and three drawn from the dataset -- meeting at the
    boundary point ``(w, h) = (round(size · β₁), round(size · β₂))``, ``βᵢ ~ Beta(beta,
    beta)``: top-left ``w × h``, top-right ``(size − w) × h``, bottom-left ``w × (size −
    h)``, bottom-right the rest. Each image is resized (keeping its aspect ratio) so its
    shorter side is ``size`` and its patch cropped at a uniform random position. Boxes
    are clipped to their patch, kept where at least ``min_visible`` of their area and
    ``min_size`` px remain. The patches' area fractions (the paper's label weights) are
    recorded as ``ricap_weights``."""

    def __init__(
        self,
        size: Annotated[int, Field(ge=8)],
        p: Annotated[float, Field(ge=0, le=1)] = 1.0,
        beta: Annotated[float, Field(gt=0)] = 0.3,
        min_visible: Annotated[float, Field(ge=0, le=1)] = 0.3,
        min_size: Annotated[float, Field(ge=0)] = 2.0,
    ) -> None:
        self.size = size
        self.p = p
        self.beta = beta
        self.min_visible = min_visible
        self.min_size = min_size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        parts = [sample] + [fetch_other(sample, rng, "ricap") for _ in range(3)]
        masked = has_masks(parts, "ricap")
        s = self.size
        w, h = (int(round(s * b)) for b in rng.beta(self.beta, self.beta, size=2))
        patches = [(0, 0, w, h), (w, 0, s - w, h), (0, h, w, s - h), (w, h, s - w, s - h)]
        canvas = np.zeros((s, s, 3), np.uint8)
        boxes, labels, masks = [], [], []
        for part, (px, py, pw, ph) in zip(parts, patches, strict=True):
            height, width = part["image"].shape[:2]
            part = resize_sample(part, s / min(height, width))
            height, width = part["image"].shape[:2]
            cx = int(rng.integers(0, width - pw + 1))
            cy = int(rng.integers(0, height - ph + 1))
            canvas[py : py + ph, px : px + pw] = part["image"][cy : cy + ph, cx : cx + pw]
            own = np.asarray(part["boxes"], np.float32).reshape(-1, 4)
            clipped = clip_to_window(own, (cx, cy, cx + pw, cy + ph))
            area = _areas(own)
            keep = (_areas(clipped) > 0) & (_areas(clipped) >= self.min_visible * area - 1e-6)
            shift = np.array([px - cx, py - cy, px - cx, py - cy], np.float32)
            boxes.append(clipped[keep] + shift)
            labels.append(np.asarray(part["labels"], np.int64)[keep])
            if masked:
                m = np.zeros((int(keep.sum()), s, s), np.uint8)
                m[:, py : py + ph, px : px + pw] = part["masks"][keep][
                    :, cy : cy + ph, cx : cx + pw
                ]
                masks.append(m)
        out = {
            **sample,
            "image": canvas,
            "boxes": np.concatenate(boxes),
            "labels": np.concatenate(labels),
            "ricap_weights": [pw * ph / (s * s) for _, _, pw, ph in patches],
        }
        if masked:
            out["masks"] = np.concatenate(masks)
        return clip_and_filter(out, self.min_size)


@register("transform", "cutmix")
class CutMix:
    """CutMix (Yun et al. 2019): with probability ``p``, a rectangle of another image
    replaces the same rectangle of this one. ``λ ~ Beta(alpha, alpha)``; the rectangle is
    ``int(W·sqrt(1 − λ)) × int(H·sqrt(1 − λ))`` centred on a uniform random pixel and
    clipped to the image, so the other image covers a fraction ``1 − λ`` of it (less where
    clipped); ``cutmix_lambda`` records ``1 − cut area / image area``, the paper's
    adjusted λ. The other image is resized (keeping its aspect ratio) to cover this one,
    top-left aligned. This image's boxes lose the covered part (`trim_by_cut`) and the
    other's are clipped to the rectangle; either is dropped where less than
    ``min_visible`` of its area or ``min_size`` px remain."""

    def __init__(
        self,
        p: Annotated[float, Field(ge=0, le=1)] = 0.5,
        alpha: Annotated[float, Field(gt=0)] = 1.0,
        min_visible: Annotated[float, Field(ge=0, le=1)] = 0.3,
        min_size: Annotated[float, Field(ge=0)] = 2.0,
    ) -> None:
        self.p = p
        self.alpha = alpha
        self.min_visible = min_visible
        self.min_size = min_size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        other = fetch_other(sample, rng, "cutmix")
        masked = has_masks([sample, other], "cutmix")
        lam = rng.beta(self.alpha, self.alpha)
        image = sample["image"]
        height, width = image.shape[:2]
        cut_w, cut_h = int(width * np.sqrt(1.0 - lam)), int(height * np.sqrt(1.0 - lam))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width).tolist()
        y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height).tolist()
        cut = (x0, y0, x1, y1)
        oh, ow = other["image"].shape[:2]
        other = resize_sample(other, max(height / oh, width / ow))
        mixed = image.copy()
        mixed[y0:y1, x0:x1] = other["image"][y0:y1, x0:x1]

        own = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        own_trimmed, own_visible = trim_by_cut(own, cut)
        own_keep = own_visible >= self.min_visible * _areas(own) - 1e-6
        theirs = np.asarray(other["boxes"], np.float32).reshape(-1, 4)
        theirs_clipped = clip_to_window(theirs, cut)
        their_area = _areas(theirs_clipped)
        their_keep = (their_area > 0) & (their_area >= self.min_visible * _areas(theirs) - 1e-6)
        out = {
            **sample,
            "image": mixed,
            "boxes": np.concatenate([own_trimmed[own_keep], theirs_clipped[their_keep]]),
            "labels": np.concatenate(
                [
                    np.asarray(sample["labels"], np.int64)[own_keep],
                    np.asarray(other["labels"], np.int64)[their_keep],
                ]
            ),
            "cutmix_lambda": 1.0 - (x1 - x0) * (y1 - y0) / (width * height),
        }
        if masked:
            own_masks = sample["masks"][own_keep].copy()
            own_masks[:, y0:y1, x0:x1] = 0
            their_masks = np.zeros((int(their_keep.sum()), height, width), np.uint8)
            their_masks[:, y0:y1, x0:x1] = other["masks"][their_keep][:, y0:y1, x0:x1]
            out["masks"] = np.concatenate([own_masks, their_masks])
        return clip_and_filter(out, self.min_size)
