"""Box-aware transforms: ``transform(sample, rng) -> sample``.

A sample is the dict of docs/ARCHITECTURE.md (``image (H, W, 3) uint8``,
``boxes (N, 4) float32 xyxy px``, ``labels (N,)``, ...), optionally with
``masks (N, H, W) uint8`` instance masks: every geometric transform moves the
masks with the pixels, and a box that is dropped (it left the image or became
smaller than ``min_size``) is dropped with its label and mask (`keep_boxes`).
Transforms return a new dict and never modify the input arrays. All
randomness comes from the ``rng: numpy.random.Generator`` passed in, so a
sample's augmentation is a function of the seed that made ``rng`` (see
`TransformedDataset`). `Normalize` turns the image into a float32 CHW tensor
and comes last.

Context keys (set by `TransformedDataset`, removed before batching):

- ``_fetch(index) -> sample``: another raw sample of the dataset, for the
  transforms that mix images (``mosaic``, ``mixup``, ``copy_paste``); they
  draw the indices from ``rng`` (``_num_samples`` is the dataset size), so the
  result is still a function of ``(seed, epoch, index)``.
- ``_batch_seed = (seed, epoch, batch)``: the same for every sample of one
  batch, so that ``multi_scale`` picks one size per batch.

This module holds the shared helpers and the flips, quarter turns, resizes, pad and
normalize; the other transforms live in `crop_expand`, `photometric` and
`mixing` (all registered when `tunedet.data` is imported).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from tunedet.config.registry import register

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
PER_BOX_KEYS = ("boxes", "labels", "masks")  # arrays indexed by box along axis 0


def _writable(image: np.ndarray) -> np.ndarray:
    """A C-contiguous writable array (torch.from_numpy warns on read-only ones)."""
    if image.flags.c_contiguous and image.flags.writeable:
        return image
    return np.array(image, order="C")


def keep_boxes(sample: dict, keep: np.ndarray) -> dict:
    """The sample with only the boxes selected by ``keep`` (bool mask or indices),
    their labels and their masks."""
    out = dict(sample)
    for key in PER_BOX_KEYS:
        if key in sample:
            out[key] = np.asarray(sample[key])[keep]
    return out


def clip_and_filter(sample: dict, min_size: float = 1.0) -> dict:
    """Clip boxes to the image and drop those narrower or lower than ``min_size`` px
    (with their labels and masks); every kept box has positive area."""
    height, width = sample["image"].shape[:2]
    boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (w >= max(min_size, 1e-3)) & (h >= max(min_size, 1e-3))
    return keep_boxes({**sample, "boxes": boxes}, keep)


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of an ``(H, W, 3) uint8`` image (a no-op at the same size)."""
    if image.shape[:2] == (height, width):
        return image
    return np.array(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def resize_masks(masks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of ``masks (N, H, W)``: output pixel centre ``(j + 0.5)``
    samples input pixel ``floor((j + 0.5) · H / height)``."""
    n, h, w = masks.shape
    if (h, w) == (height, width):
        return masks
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return np.ascontiguousarray(masks[:, rows][:, :, cols])


def place(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    """Write ``image (h, w, ...)`` into ``canvas (H, W, ...)`` with its top-left corner at
    ``(x, y)``, cutting what falls outside (masks ``(N, H, W)``: pass ``.transpose(1, 2, 0)``
    views)."""
    h, w = image.shape[:2]
    height, width = canvas.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = image[y0 - y : y1 - y, x0 - x : x1 - x]


def flip_boxes(boxes: np.ndarray, size: int, horizontal: bool) -> np.ndarray:
    """Mirror ``boxes (N, 4) xyxy`` in an image of width (or height) ``size``."""
    out = boxes.copy()
    a, b = (0, 2) if horizontal else (1, 3)
    out[:, a] = size - boxes[:, b]
    out[:, b] = size - boxes[:, a]
    return out


@register("transform", "hflip")
class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: Annotated[float, Field(ge=0, le=1)] = 0.5) -> None:
        self.p = p

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        width = sample["image"].shape[1]
        out = {
            **sample,
            "image": np.ascontiguousarray(sample["image"][:, ::-1]),
            "boxes": flip_boxes(sample["boxes"], width, horizontal=True),
        }
        if "masks" in sample:
            out["masks"] = np.ascontiguousarray(sample["masks"][:, :, ::-1])
        return out


@register("transform", "vflip")
class RandomVerticalFlip:
    """Mirror top-bottom with probability ``p`` (aerial / microscopy images)."""

    def __init__(self, p: Annotated[float, Field(ge=0, le=1)] = 0.5) -> None:
        self.p = p

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        height = sample["image"].shape[0]
        out = {
            **sample,
            "image": np.ascontiguousarray(sample["image"][::-1]),
            "boxes": flip_boxes(sample["boxes"], height, horizontal=False),
        }
        if "masks" in sample:
            out["masks"] = np.ascontiguousarray(sample["masks"][:, ::-1])
        return out


def rotate_boxes_90(boxes: np.ndarray, width: int) -> np.ndarray:
    """``boxes (N, 4) xyxy`` after one counter-clockwise quarter turn (``np.rot90``) of an
    image ``width`` px wide: the point (x, y) goes to (y, width − x)."""
    return np.stack(
        [boxes[:, 1], width - boxes[:, 2], boxes[:, 3], width - boxes[:, 0]], axis=1
    ).astype(np.float32)


@register("transform", "rot90")
class RandomRotate90:
    """With probability ``p``, turn the image by 1, 2 or 3 quarter turns (uniformly,
    counter-clockwise): for overhead imagery, where up has no meaning. With ``hflip`` it
    reaches all 8 symmetries of the square."""

    def __init__(self, p: Annotated[float, Field(ge=0, le=1)] = 0.5) -> None:
        self.p = p

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        turns = int(rng.integers(1, 4))
        image = sample["image"]
        boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        for turn in range(turns):
            width = image.shape[1] if turn % 2 == 0 else image.shape[0]
            boxes = rotate_boxes_90(boxes, width)
        out = {
            **sample,
            "image": np.ascontiguousarray(np.rot90(image, turns)),
            "boxes": boxes,
        }
        if "masks" in sample:
            out["masks"] = np.ascontiguousarray(np.rot90(sample["masks"], turns, axes=(1, 2)))
        return out


def resize_scale(
    height: int,
    width: int,
    size: int | None,
    mode: str = "longer",
    max_size: int | None = None,
    factor: float | None = None,
) -> float:
    """The resize factor: ``size / max(H, W)`` (``longer``) or ``size / min(H, W)``
    (``shorter``, Detectron's MIN_SIZE), or ``factor`` itself when given, then capped so
    the longer side is at most ``max_size`` (Detectron's MAX_SIZE)."""
    if factor is not None:
        scale = factor
    else:
        scale = size / (max(height, width) if mode == "longer" else min(height, width))
    if max_size is not None:
        scale = min(scale, max_size / max(height, width))
    return scale


def resize_sample(sample: dict, scale: float) -> dict:
    """Resize the image, boxes and masks by ``scale`` (image side ``round(side · scale)``),
    multiplying ``scale`` into the sample's."""
    image = sample["image"]
    height, width = image.shape[:2]
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    boxes = np.asarray(sample["boxes"], np.float32).reshape(-1, 4) * np.float32(scale)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, new_w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, new_h)
    out = {
        **sample,
        "image": resize_image(image, new_w, new_h),
        "boxes": boxes.astype(np.float32),
        "scale": sample.get("scale", 1.0) * scale,
    }
    if "masks" in sample:
        out["masks"] = resize_masks(sample["masks"], new_w, new_h)
    return out


@register("transform", "resize")
class Resize:
    """Resize keeping the aspect ratio so that the longer (or shorter) side is ``size`` px,
    or by a fixed ``factor`` (give one of the two).

    ``mode: longer`` (default): ``scale = size / max(H, W)``. ``mode: shorter``:
    ``scale = size / min(H, W)``, capped by ``max_size`` on the longer side
    (Detectron's min_size / max_size). ``factor: 2.0``: ``scale = 2`` whatever the
    image's size (small objects enlarged; also capped by ``max_size``). Boxes are
    multiplied by the same factor, which is recorded in the sample (multiplied into an
    earlier ``scale``), so ``box / scale`` maps back to the original image exactly;
    the image side is ``round(side * scale)`` (bilinear).
    """

    def __init__(
        self,
        size: Annotated[int, Field(ge=1)] | None = None,
        mode: Literal["longer", "shorter"] = "longer",
        max_size: Annotated[int, Field(ge=1)] | None = None,
        factor: Annotated[float, Field(gt=0)] | None = None,
    ) -> None:
        if (size is None) == (factor is None):
            raise ValueError("resize needs exactly one of size or factor")
        self.size = size
        self.mode = mode
        self.max_size = max_size
        self.factor = factor

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        height, width = sample["image"].shape[:2]
        scale = resize_scale(height, width, self.size, self.mode, self.max_size, self.factor)
        return resize_sample(sample, scale)


@register("transform", "multi_scale")
class MultiScaleResize:
    """Multi-scale training: resize (as `Resize`) to a size drawn once per batch.

    The size is drawn from ``sizes``, or uniformly from ``range(lo, hi + 1,
    step)`` for ``size_range: [lo, hi]``, with a generator seeded by the
    sample's ``_batch_seed = (seed, epoch, batch)`` -- the same for all images
    of a batch and a pure function of the batch's place in the run, so a
    resumed run sees the same sizes. Without a batch seed (plain int keys) the
    size is drawn from the sample's ``rng`` (one size per image).
    """

    def __init__(
        self,
        sizes: tuple[int, ...] | None = None,
        size_range: tuple[int, int] | None = None,
        step: Annotated[int, Field(ge=1)] = 32,
        mode: Literal["longer", "shorter"] = "longer",
        max_size: Annotated[int, Field(ge=1)] | None = None,
    ) -> None:
        if (sizes is None) == (size_range is None):
            raise ValueError("multi_scale needs exactly one of sizes or size_range")
        if size_range is not None:
            lo, hi = size_range
            if not 1 <= lo <= hi:
                raise ValueError(f"multi_scale size_range must be 1 <= lo <= hi, got {size_range}")
            sizes = tuple(range(lo, hi + 1, step))
        if not sizes or min(sizes) < 1:
            raise ValueError(f"multi_scale sizes must be positive, got {sizes}")
        self.sizes = tuple(int(s) for s in sizes)
        self.mode = mode
        self.max_size = max_size

    def pick_size(self, sample: dict, rng: np.random.Generator) -> int:
        batch_seed = sample.get("_batch_seed")
        source = rng if batch_seed is None else np.random.default_rng([*batch_seed, 0x5CA1E])
        return self.sizes[int(source.integers(len(self.sizes)))]

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        size = self.pick_size(sample, rng)
        height, width = sample["image"].shape[:2]
        return resize_sample(sample, resize_scale(height, width, size, self.mode, self.max_size))


@register("transform", "pad")
class Pad:
    """Pad the image bottom/right with ``fill`` to a multiple of ``size_divisor``
    (boxes unchanged, masks zero-padded). Before `Normalize`."""

    def __init__(
        self,
        size_divisor: Annotated[int, Field(ge=1)] = 32,
        fill: Annotated[int, Field(ge=0, le=255)] = 0,
    ) -> None:
        self.size_divisor = size_divisor
        self.fill = fill

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        image = sample["image"]
        height, width = image.shape[:2]
        d = self.size_divisor
        new_h, new_w = -(-height // d) * d, -(-width // d) * d
        if (new_h, new_w) == (height, width):
            return sample
        canvas = np.full((new_h, new_w, 3), self.fill, np.uint8)
        canvas[:height, :width] = image
        out = {**sample, "image": canvas}
        if "masks" in sample:
            masks = np.zeros((len(sample["masks"]), new_h, new_w), np.uint8)
            masks[:, :height, :width] = sample["masks"]
            out["masks"] = masks
        return out


@register("transform", "normalize")
class Normalize:
    """``(image - mean) / std`` per channel (0-255 units), as a float32 ``(3, H, W)`` tensor. Last."""

    def __init__(
        self,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        image = torch.from_numpy(_writable(sample["image"])).permute(2, 0, 1)
        return {**sample, "image": (image.float() - self.mean) / self.std}


class Compose:
    """Apply transforms in order, all drawing from the same ``rng``."""

    def __init__(self, transforms: Sequence[Callable[[dict, np.random.Generator], dict]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"
