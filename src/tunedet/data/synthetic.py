"""Built-in synthetic shapes: a detection set generated on the fly, no download.

Image ``i`` is a pure function of ``(seed, i)``: its geometry (boxes, classes)
comes from ``default_rng([seed, i, 0])`` and its pixels from
``default_rng([seed, i, 1])``, so the same item is identical in any worker
and any order, and `coco_ground_truth()` samples geometry without rendering.

The class is the *shape* (circle, square, triangle, diamond, cross), never
the colour: every object's colour comes from one distribution for all
classes. Objects are stretched by an aspect ratio in [2/3, 3/2], sized
log-uniformly from ``min_size`` px to ``max_size_frac`` of the image, may
overlap but a new object may not cover more than 60% of an earlier one's box.
Backgrounds are blocky or smooth two-colour noise, with pixel noise over
the whole image; clutter
(lines, blobs smaller than ``min_size``) is drawn under the objects and is
not annotated. Boxes are the tight boxes of the drawn shapes (integer px).

With ``masks: true`` each object also has its shape's own (amodal) mask, drawn
by the same primitive as its pixels: the full shape, also where a later
object covers it, so every mask's tight box is its object's box. The COCO
ground truth then carries each mask as compressed RLE, with ``area`` the mask's
pixel count (COCO's definition).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from PIL import Image, ImageDraw
from pydantic import Field
from torch.utils.data import Dataset

from tunedet.config.registry import register
from tunedet.data.bad_input import BadInputReport
from tunedet.data.masks import encode_masks, rle_area

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
MAX_COVER = 0.6  # a new object may cover at most this fraction of an earlier object's box
PLACEMENT_TRIES = 20
ASPECT_RANGE = (2.0 / 3.0, 3.0 / 2.0)
MIN_CONTRAST = 80  # L1 distance (0..765) of an object's colour from both background colours


def sample_geometry(
    rng: np.random.Generator,
    image_size: int,
    num_classes: int,
    max_objects: int,
    min_size: float,
    max_size_frac: float,
    empty_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4) float32`` xyxy (integer-valued) and labels ``(N,) int64`` of one image."""
    if rng.random() < empty_fraction:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    lo = max(1, math.ceil(min_size))
    hi = max(lo, min(image_size, math.floor(max_size_frac * image_size)))
    log_lo, log_hi = math.log(lo), math.log(hi + 1)
    log_aspect = (math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1]))
    count = int(rng.integers(1, max_objects + 1))
    labels = rng.integers(num_classes, size=count)
    # PLACEMENT_TRIES candidate boxes per object, drawn at once; the first candidate
    # that covers no earlier object's box by more than MAX_COVER is placed.
    u = rng.random((4, count, PLACEMENT_TRIES))
    side = np.exp(log_lo + (log_hi - log_lo) * u[0])
    aspect = np.sqrt(np.exp(log_aspect[0] + (log_aspect[1] - log_aspect[0]) * u[1]))
    w = np.minimum(np.maximum(side * aspect, lo), hi).astype(np.int64)
    h = np.minimum(np.maximum(side / aspect, lo), hi).astype(np.int64)
    x0 = (u[2] * (image_size - w + 1)).astype(np.int64)
    y0 = (u[3] * (image_size - h + 1)).astype(np.int64)
    candidates = np.stack([x0, y0, x0 + w, y0 + h], axis=-1)  # (count, tries, 4)
    placed = [0]
    for k in range(1, count):
        ok = (covered_fraction(candidates[k], candidates[placed, 0]) <= MAX_COVER).all(axis=1)
        if ok.any():
            first = int(ok.argmax())
            candidates[k, 0] = candidates[k, first]  # the placed box is stored in slot 0
            placed.append(k)
    boxes = candidates[placed, 0].astype(np.float32)
    return boxes, labels[placed].astype(np.int64)


def covered_fraction(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """``(P, Q)`` fraction of each ``old (Q, 4)`` box's area covered by each ``new (P, 4)`` box."""
    iw = np.minimum(new[:, None, 2], old[None, :, 2]) - np.maximum(new[:, None, 0], old[None, :, 0])
    ih = np.minimum(new[:, None, 3], old[None, :, 3]) - np.maximum(new[:, None, 1], old[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    return inter / ((old[:, 2] - old[:, 0]) * (old[:, 3] - old[:, 1]))[None, :]


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: np.ndarray, fill: tuple) -> None:
    """Fill ``shape`` whose tight pixel box is ``box`` (xyxy, x1/y1 exclusive)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    r, b = x1 - 1, y1 - 1  # last column / row, inclusive
    cx, cy = (x0 + r) / 2, (y0 + b) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, r, b), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, r, b), fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0, b), (r, b), (cx, y0)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (r, cy), (cx, b), (x0, cy)], fill=fill)
    elif shape == "cross":
        tx, ty = max(1, (x1 - x0) // 3), max(1, (y1 - y0) // 3)
        left, top = x0 + (x1 - x0 - tx) // 2, y0 + (y1 - y0 - ty) // 2
        draw.rectangle((x0, top, r, top + ty - 1), fill=fill)
        draw.rectangle((left, y0, left + tx - 1, b), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_masks(image_size: int, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The shapes' own masks ``(N, S, S) uint8`` (1 inside), drawn as `render_scene` draws them."""
    masks = np.zeros((len(boxes), image_size, image_size), np.uint8)
    for k, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        canvas = Image.new("L", (image_size, image_size), 0)
        draw_shape(ImageDraw.Draw(canvas), SHAPES[int(label)], box, 1)
        masks[k] = np.asarray(canvas)
    return masks


def _background(rng: np.random.Generator, size: int) -> tuple[Image.Image, np.ndarray]:
    """Two random colours mixed by an upsampled random grid (blocky or smooth)."""
    colours = rng.integers(0, 256, (2, 3))
    cells = int(rng.integers(2, 17))
    grid = Image.fromarray(rng.integers(0, 256, (cells, cells), dtype=np.uint8))
    resample = Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BILINEAR
    mix = grid.resize((size, size), resample)
    first, second = (Image.new("RGB", (size, size), tuple(int(v) for v in c)) for c in colours)
    return Image.composite(second, first, mix), colours


def _colours(rng: np.random.Generator, count: int, avoid: np.ndarray) -> list[tuple[int, ...]]:
    """``count`` random RGB colours, each redrawn (up to 8 tries) if close to an ``avoid`` colour."""
    candidates = rng.integers(0, 256, (count, 8, 3))
    distance = np.abs(candidates[:, :, None, :] - avoid[None, None]).sum(-1).min(-1)
    first_ok = (distance >= MIN_CONTRAST).argmax(axis=1)
    return [tuple(c) for c in candidates[np.arange(count), first_ok].tolist()]


def render_scene(
    rng: np.random.Generator,
    image_size: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    clutter: bool,
    min_size: float,
) -> np.ndarray:
    """Pixels ``(S, S, 3) uint8`` of one image with the given geometry."""
    image, background = _background(rng, image_size)
    draw = ImageDraw.Draw(image)
    num_lines, num_blobs = (int(n) for n in rng.integers(0, (6, 8))) if clutter else (0, 0)
    colours = iter(_colours(rng, num_lines + num_blobs + len(boxes), background))
    if clutter:
        for points in rng.integers(0, image_size, (num_lines, 4)).tolist():
            draw.line(points, fill=next(colours), width=int(rng.integers(1, 4)))
        blob = max(2, int(min_size * 0.6))
        for d, u, v in zip(
            rng.integers(2, blob + 1, num_blobs).tolist(),
            rng.random(num_blobs).tolist(),
            rng.random(num_blobs).tolist(),
            strict=True,
        ):
            x, y = int(u * (image_size - d + 1)), int(v * (image_size - d + 1))
            draw.ellipse((x, y, x + d - 1, y + d - 1), fill=next(colours))
    for box, label in zip(boxes, labels, strict=True):
        draw_shape(draw, SHAPES[int(label)], box, next(colours))
    # Pixel noise over everything (objects included), one random amplitude per image.
    amplitude = int(rng.integers(0, 21))
    noise = rng.integers(-amplitude, amplitude + 1, (image_size, image_size, 1), dtype=np.int16)
    return np.clip(np.asarray(image, np.int16) + noise, 0, 255).astype(np.uint8)


@register("dataset", "synthetic")
class SyntheticShapes(Dataset):
    """Shapes on noisy backgrounds, generated on the fly from ``(seed, index)``.

    Args:
        num_images: number of items.
        image_size: side of the square images (px).
        seed: dataset seed (train and val use different seeds).
        num_classes: how many of circle, square, triangle, diamond, cross.
        max_objects: objects per image are uniform in 1..max_objects.
        min_size: smallest object side (px).
        max_size_frac: largest object side as a fraction of image_size.
        empty_fraction: probability that an image has no object.
        clutter: draw distractor lines and small blobs (not annotated).
        masks: add each object's mask (``"masks" (N, S, S) uint8``, the shape's own).
    """

    def __init__(
        self,
        num_images: Annotated[int, Field(ge=1)] = 512,
        image_size: Annotated[int, Field(ge=16)] = 128,
        seed: Annotated[int, Field(ge=0)] = 0,
        num_classes: Literal[1, 2, 3, 4, 5] = 3,
        max_objects: Annotated[int, Field(ge=1)] = 6,
        min_size: Annotated[float, Field(ge=2)] = 8.0,
        max_size_frac: Annotated[float, Field(gt=0, le=1)] = 0.7,
        empty_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05,
        clutter: bool = True,
        masks: bool = False,
    ) -> None:
        if min_size > max_size_frac * image_size:
            raise ValueError(
                f"min_size {min_size} is larger than max_size_frac * image_size "
                f"= {max_size_frac * image_size}"
            )
        if num_classes not in range(1, len(SHAPES) + 1):
            raise ValueError(f"num_classes must be 1..{len(SHAPES)}, got {num_classes}")
        self.num_images = num_images
        self.image_size = image_size
        self.seed = seed
        self.max_objects = max_objects
        self.min_size = min_size
        self.max_size_frac = max_size_frac
        self.empty_fraction = empty_fraction
        self.clutter = clutter
        self.masks = masks
        self.classes = list(SHAPES[:num_classes])
        self.report = BadInputReport()

    def __len__(self) -> int:
        return self.num_images

    def geometry(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``(N, 4)`` and labels ``(N,)`` of item ``index``, without rendering it."""
        rng = np.random.default_rng([self.seed, index, 0])
        return sample_geometry(
            rng,
            self.image_size,
            len(self.classes),
            self.max_objects,
            self.min_size,
            self.max_size_frac,
            self.empty_fraction,
        )

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        boxes, labels = self.geometry(index)
        rng = np.random.default_rng([self.seed, index, 1])
        image = render_scene(rng, self.image_size, boxes, labels, self.clutter, self.min_size)
        sample = {
            "image": image,
            "boxes": boxes,
            "labels": labels,
            "image_id": index + 1,
            "file": f"{index:06d}.png",
        }
        if self.masks:
            sample["masks"] = render_masks(self.image_size, boxes, labels)
        return sample

    def coco_ground_truth(self) -> dict:
        """COCO GT of all items (geometry only, no image rendered); ``category_id`` == label.

        With masks, each annotation has ``segmentation`` (compressed RLE) and ``area``
        is the mask's pixel count."""
        images, annotations = [], []
        for index in range(self.num_images):
            boxes, labels = self.geometry(index)
            rles = encode_masks(render_masks(self.image_size, boxes, labels)) if self.masks else []
            images.append(
                {
                    "id": index + 1,
                    "file_name": f"{index:06d}.png",
                    "width": self.image_size,
                    "height": self.image_size,
                }
            )
            for k, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist(), strict=True)):
                w, h = box[2] - box[0], box[3] - box[1]
                annotation = {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": label,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
                if self.masks:
                    annotation["segmentation"] = rles[k]
                    annotation["area"] = float(rle_area(rles[k]))
                annotations.append(annotation)
        categories = [{"id": i, "name": name} for i, name in enumerate(self.classes)]
        return {"images": images, "annotations": annotations, "categories": categories}
