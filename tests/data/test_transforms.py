"""Flips, quarter turns, random crops and resize move boxes with the pixels and keep labels;
normalize makes the tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunedet.data import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomRotate90,
    RandomVerticalFlip,
    Resize,
)
from tunedet.data.mixing import mask_tight_boxes  # checked against a loop in test_masks.py


def make_sample(height=6, width=10):
    image = np.zeros((height, width, 3), np.uint8)
    image[2:6, 1:4] = 255  # a white patch exactly under the first box
    return {
        "image": image,
        "boxes": np.array([[1, 2, 4, 6], [0, 0, 10, 6]], np.float32),
        "labels": np.array([2, 0], np.int64),
        "image_id": 1,
        "file": "x.png",
    }


def patch_box(image):
    on = image[..., 0] > 0
    cols, rows = np.flatnonzero(on.any(0)), np.flatnonzero(on.any(1))
    return [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_hflip_mirrors_boxes_with_the_pixels_and_keeps_labels():
    sample = make_sample()
    out = RandomHorizontalFlip(p=1.0)(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(out["boxes"], [[6, 2, 9, 6], [0, 0, 10, 6]])
    assert patch_box(out["image"]) == [6, 2, 9, 6]
    assert out["labels"].tolist() == [2, 0]
    np.testing.assert_array_equal(sample["boxes"][0], [1, 2, 4, 6])  # input untouched
    assert out["image"].flags.c_contiguous


def test_vflip_mirrors_boxes_with_the_pixels():
    out = RandomVerticalFlip(p=1.0)(make_sample(height=8), np.random.default_rng(0))
    np.testing.assert_array_equal(out["boxes"], [[1, 2, 4, 6], [0, 2, 10, 8]])
    assert patch_box(out["image"]) == [1, 2, 4, 6]


def coordinate_sample(height: int, width: int, seed: int, n: int = 12) -> dict:
    """A sample whose pixel (y, x) holds (x, y, 0) and whose boxes come with masks
    (filled rectangles), so where any output pixel came from can be read off it."""
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx, yy, np.zeros_like(xx)], axis=-1).astype(np.uint8)
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, [width - 2, height - 2], size=(n, 2))
    wh = rng.integers(1, 12, size=(n, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], 1).astype(np.float32)
    masks = np.zeros((n, height, width), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
        masks[k, y0:y1, x0:x1] = 1
    labels = np.arange(n, dtype=np.int64)
    return {"image": image, "boxes": boxes, "labels": labels, "masks": masks}


@pytest.mark.parametrize("seed", range(6))
def test_rot90_turns_boxes_masks_and_pixels_together(seed):
    sample = coordinate_sample(30, 50, seed)
    out = RandomRotate90(p=1.0)(sample, np.random.default_rng(seed))
    turns = next(k for k in (1, 2, 3) if np.array_equal(out["image"], np.rot90(sample["image"], k)))
    assert out["image"].shape[:2] == ((50, 30) if turns % 2 else (30, 50))
    np.testing.assert_array_equal(out["masks"], np.rot90(sample["masks"], turns, axes=(1, 2)))
    np.testing.assert_array_equal(out["boxes"], mask_tight_boxes(out["masks"]))  # closed form
    assert out["labels"].tolist() == sample["labels"].tolist()


def test_rot90_draws_each_number_of_turns():
    sample = coordinate_sample(8, 8, 0)
    seen = set()
    for seed in range(40):
        out = RandomRotate90(p=1.0)(sample, np.random.default_rng(seed))
        seen.add(
            next(k for k in (1, 2, 3) if np.array_equal(out["image"], np.rot90(sample["image"], k)))
        )
    assert seen == {1, 2, 3}


@pytest.mark.parametrize("seed", range(6))
def test_random_crop_cuts_a_window_and_keeps_boxes_by_visible_fraction(seed):
    sample = coordinate_sample(40, 60, seed, n=20)
    out = RandomCrop(size=24, min_visible=0.5)(sample, np.random.default_rng(seed))
    assert out["image"].shape[:2] == (24, 24)
    x0, y0 = int(out["image"][0, 0, 0]), int(out["image"][0, 0, 1])  # where the window sits
    np.testing.assert_array_equal(out["image"], sample["image"][y0 : y0 + 24, x0 : x0 + 24])
    # float64 reference of the rule: visible area / area >= 0.5, clipped, shifted
    boxes = sample["boxes"].astype(np.float64)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(x0, x0 + 24)
    clipped[:, 1::2] = clipped[:, 1::2].clip(y0, y0 + 24)
    visible = np.prod(clipped[:, 2:] - clipped[:, :2], axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    keep = visible / area >= 0.5
    assert out["labels"].tolist() == np.flatnonzero(keep).tolist()
    np.testing.assert_allclose(out["boxes"], clipped[keep] - [x0, y0, x0, y0])
    np.testing.assert_array_equal(out["masks"], sample["masks"][keep, y0 : y0 + 24, x0 : x0 + 24])


def test_random_crop_larger_than_the_image_keeps_the_whole_side():
    sample = coordinate_sample(16, 60, 0)
    out = RandomCrop(size=24)(sample, np.random.default_rng(0))
    assert out["image"].shape[:2] == (16, 24)


def test_flip_with_p_zero_is_identity():
    sample = make_sample()
    assert RandomHorizontalFlip(p=0.0)(sample, np.random.default_rng(0)) is sample
    assert RandomVerticalFlip(p=0.0)(sample, np.random.default_rng(0)) is sample


def test_flip_probability_follows_p():
    rng = np.random.default_rng(0)
    flip = RandomHorizontalFlip(p=0.3)
    flipped = sum(flip(make_sample(), rng)["boxes"][0, 0] == 6 for _ in range(2000))
    assert 0.25 < flipped / 2000 < 0.35


def test_resize_makes_the_longer_side_size_and_scales_boxes():
    out = Resize(size=20)(make_sample(height=6, width=10), np.random.default_rng(0))
    assert out["image"].shape == (12, 20, 3)
    assert out["scale"] == pytest.approx(2.0)
    np.testing.assert_allclose(out["boxes"], [[2, 4, 8, 12], [0, 0, 20, 12]])
    assert out["labels"].tolist() == [2, 0]


def test_resize_by_a_factor_scales_any_image_alike_and_max_size_caps_it():
    rng = np.random.default_rng(0)
    out = Resize(factor=1.5)(make_sample(height=6, width=10), rng)
    assert out["image"].shape == (9, 15, 3)
    assert out["scale"] == pytest.approx(1.5)
    np.testing.assert_allclose(out["boxes"], [[1.5, 3, 6, 9], [0, 0, 15, 9]])
    capped = Resize(factor=3.0, max_size=20)(make_sample(height=6, width=10), rng)
    assert capped["image"].shape == (12, 20, 3) and capped["scale"] == pytest.approx(2.0)
    for bad in ({}, {"size": 20, "factor": 2.0}):
        with pytest.raises(ValueError, match="exactly one of size or factor"):
            Resize(**bad)


def test_resize_twice_multiplies_scale():
    rng = np.random.default_rng(0)
    out = Resize(size=5)(Resize(size=20)(make_sample(height=6, width=10), rng), rng)
    assert out["scale"] == pytest.approx(0.5)
    assert out["image"].shape == (3, 5, 3)
    np.testing.assert_allclose(out["boxes"][0], [0.5, 1, 2, 3])


def test_normalize_makes_a_float_chw_tensor():
    sample = make_sample()
    out = Normalize(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))(sample, np.random.default_rng(0))
    image = out["image"]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert image.shape == (3, 6, 10)
    assert image[:, 0, 0].tolist() == [-5.0, -5.0, -6.0]
    assert image[:, 2, 1].tolist() == [122.5, 58.75, 45.0]


def test_compose_applies_transforms_in_order():
    pipeline = Compose([RandomHorizontalFlip(p=1.0), Resize(size=20), Normalize()])
    out = pipeline(make_sample(), np.random.default_rng(0))
    np.testing.assert_allclose(out["boxes"][0], [12, 4, 18, 12])
    assert out["image"].shape == (3, 12, 20)
