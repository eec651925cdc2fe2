"""Pixel-only augmentations: photometric distortion, Cutout, Random Erasing.

Boxes, labels and masks are unchanged (the objects stay where they are; an
erased part of an object is still the object, as in the papers).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from tunedet.config.registry import register

GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as PIL "L"


def shift_hue(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate the hue of an RGB uint8 image by ``degrees`` (PIL HSV, hue in 256 steps)."""
    shift = round(degrees / 360.0 * 256.0)
    if shift % 256 == 0:  # the HSV round trip is lossy: skip it when there is nothing to do
        return image
    hsv = np.array(Image.fromarray(image).convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
    return np.array(Image.fromarray(hsv, mode="HSV").convert("RGB"))


@register("transform", "photometric")
class PhotometricDistortion:
    """SSD / mmdetection photometric distortion: with probability ``p``, each of

    - brightness ``x + δ``, ``δ ~ U(-brightness, brightness)``,
    - contrast ``x · α``, ``α ~ U(contrast)``,
    - saturation ``g + s · (x - g)`` with ``g`` the grey value, ``s ~ U(saturation)``,
    - hue rotation by ``U(-hue, hue)`` degrees,

    is applied with probability 1/2, in this order, in float and rounded back to
    uint8 (clipped to 0..255). Boxes unchanged.
    """

    def __init__(
        self,
        p: Annotated[float, Field(ge=0, le=1)] = 1.0,
        brightness: Annotated[float, Field(ge=0, le=255)] = 32.0,
        contrast: tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]] = (0.5, 1.5),
        saturation: tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]] = (
            0.5,
            1.5,
        ),
        hue: Annotated[float, Field(ge=0, le=180)] = 18.0,
    ) -> None:
        self.p = p
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        do = rng.random(4) < 0.5
        delta = rng.uniform(-self.brightness, self.brightness)
        alpha = rng.uniform(*self.contrast)
        sat = rng.uniform(*self.saturation)
        hue = rng.uniform(-self.hue, self.hue)
        image = sample["image"].astype(np.float32)
        if do[0]:
            image = image + delta
        if do[1]:
            image = image * alpha
        if do[2]:
            gray = (image @ GRAY_WEIGHTS)[..., None]
            image = gray + sat * (image - gray)
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        if do[3]:
            image = shift_hue(image, hue)
        return {**sample, "image": image}


@register("transform", "cutout")
class Cutout:
    """Cutout (DeVries & Taylor, 2017): with probability ``p``, fill ``n_holes`` squares of
    side ``size`` × the shorter image side, centred uniformly in the image (cut at the
    border), with ``fill``. Boxes unchanged."""

    def __init__(
        self,
        p: Annotated[float, Field(ge=0, le=1)] = 0.5,
        n_holes: Annotated[int, Field(ge=1)] = 1,
        size: Annotated[float, Field(gt=0, le=1)] = 0.25,
        fill: Annotated[int, Field(ge=0, le=255)] = 0,
    ) -> None:
        self.p = p
        self.n_holes = n_holes
        self.size = size
        self.fill = fill

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        image = sample["image"].copy()
        height, width = image.shape[:2]
        side = max(1, round(self.size * min(height, width)))
        centres = rng.uniform(0, 1, (self.n_holes, 2)) * (width, height)
        for cx, cy in centres:
            x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
            image[y0 : round(cy + side / 2), x0 : round(cx + side / 2)] = self.fill
        return {**sample, "image": image}


@register("transform", "random_erasing")
class RandomErasing:
    """Random Erasing (Zhong et al., AAAI 2020): with probability ``p``, erase one
    rectangle of area ``U(scale)`` × the image area and aspect ratio (h/w) log-uniform in
    ``ratio``, at a uniform position (up to 10 tries to fit one), with random pixels
    (``value: random``) or a constant grey ``value``. Boxes unchanged."""

    def __init__(
        self,
        p: Annotated[float, Field(ge=0, le=1)] = 0.5,
        scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (
            0.02,
            0.33,
        ),
        ratio: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.3, 3.3),
        value: Literal["random"] | Annotated[int, Field(ge=0, le=255)] = "random",
    ) -> None:
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError(f"random_erasing scale {scale} and ratio {ratio} must be increasing")
        self.p = p
        self.scale = scale
        self.ratio = ratio
        self.value = value

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if rng.random() >= self.p:
            return sample
        image = sample["image"]
        height, width = image.shape[:2]
        log_ratio = np.log(self.ratio)
        for _ in range(10):
            area = rng.uniform(*self.scale) * height * width
            aspect = np.exp(rng.uniform(*log_ratio))
            h, w = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
            if not (1 <= h < height and 1 <= w < width):
                continue
            y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            image = image.copy()
            if self.value == "random":
                image[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            else:
                image[y0 : y0 + h, x0 : x0 + w] = self.value
            return {**sample, "image": image}
        return sample
