"""Flips and resize move boxes with the pixels and keep labels; normalize makes the tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunedet.data import Compose, Normalize, RandomHorizontalFlip, RandomVerticalFlip, Resize


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
