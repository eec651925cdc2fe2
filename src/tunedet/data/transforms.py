"""Box-aware transforms: ``transform(sample, rng) -> sample``.

A sample is the dict of docs/ARCHITECTURE.md (``image (H, W, 3) uint8``,
``boxes (N, 4) float32 xyxy px``, ``labels (N,)``, ...). Transforms return a
new dict and never modify the input arrays. All randomness comes from the
``rng: numpy.random.Generator`` passed in, so a sample's augmentation is a
function of the seed that made ``rng`` (see `TransformedDataset`).
`Normalize` turns the image into a float32 CHW tensor and comes last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from tunedet.config.registry import register

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _writable(image: np.ndarray) -> np.ndarray:
    """A C-contiguous writable array (torch.from_numpy warns on read-only ones)."""
    if image.flags.c_contiguous and image.flags.writeable:
        return image
    return np.array(image, order="C")


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
        return {
            **sample,
            "image": np.ascontiguousarray(sample["image"][:, ::-1]),
            "boxes": flip_boxes(sample["boxes"], width, horizontal=True),
        }


@register("transform", "vflip")
class RandomVerticalFlip:
    """Mirror top-bottom with probability ``p`` (aerial / microscopy images)."""

    def __init__(self, p: Annotated[float, Field(ge=0, le=1)] = 0.5) -> None:
        self.p = p

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        height = sample["image"].shape[0]
        return {
            **sample,
            "image": np.ascontiguousarray(sample["image"][::-1]),
            "boxes": flip_boxes(sample["boxes"], height, horizontal=False),
        }


@register("transform", "resize")
class Resize:
    """Resize keeping the aspect ratio so that the longer side is ``size`` px.

    Boxes are multiplied by the same factor ``scale = size / max(H, W)``,
    which is recorded in the sample (multiplied into an earlier ``scale``), so
    ``box / scale`` maps back to the original image exactly; the image side
    is ``round(side * scale)`` (bilinear).
    """

    def __init__(self, size: Annotated[int, Field(ge=1)]) -> None:
        self.size = size

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        image = sample["image"]
        height, width = image.shape[:2]
        scale = self.size / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = np.array(
                Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
            )
        boxes = sample["boxes"] * np.float32(scale)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, new_w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, new_h)
        return {
            **sample,
            "image": image,
            "boxes": boxes.astype(np.float32),
            "scale": sample.get("scale", 1.0) * scale,
        }


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
