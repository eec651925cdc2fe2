"""Each augmentation against its closed form (coordinates, pixels, λ, visible fractions)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tunedet.data import (
    CopyPaste,
    Cutout,
    EpochBatchSampler,
    Expand,
    MinIoURandomCrop,
    MixUp,
    Mosaic,
    MultiScaleResize,
    Pad,
    PhotometricDistortion,
    RandomErasing,
    RandomHorizontalFlip,
    Resize,
    SyntheticShapes,
    TransformedDataset,
)
from tunedet.data.crop_expand import patch_iou
from tunedet.data.transforms import resize_masks


def coordinate_image(height: int, width: int) -> np.ndarray:
    """Pixel (y, x) holds (x, y, 7): a crop or shift can be read off the pixels."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(width)[None]
    image[..., 1] = np.arange(height)[:, None]
    image[..., 2] = 7
    return image


def sample_of(image, boxes, labels=None, masks=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    sample = {
        "image": image,
        "boxes": boxes,
        "labels": np.arange(len(boxes)) if labels is None else np.asarray(labels),
        "image_id": 1,
        "file": "a.png",
        "scale": 1.0,
    }
    if masks is not None:
        sample["masks"] = masks
    return sample


def test_resize_shorter_side_with_max_size_cap():
    sample = sample_of(np.zeros((50, 200, 3), np.uint8), [[10, 10, 40, 30]])
    out = Resize(size=100, mode="shorter")(sample, None)
    assert out["image"].shape[:2] == (100, 400) and out["scale"] == 2.0
    capped = Resize(size=100, mode="shorter", max_size=300)(sample, None)
    assert capped["image"].shape[:2] == (75, 300) and capped["scale"] == 1.5
    np.testing.assert_allclose(capped["boxes"], [[15, 15, 60, 45]])


def test_resize_masks_is_nearest_neighbour_on_pixel_centres():
    masks = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    up = resize_masks(masks, 8, 6)
    assert np.array_equal(up[0], np.kron(masks[0], np.ones((2, 2), np.uint8)))
    pil = np.array(Image.fromarray(masks[0]).resize((2, 3), Image.Resampling.NEAREST))
    assert np.array_equal(resize_masks(masks, 2, 3)[0], pil)


def test_hflip_mirrors_masks_with_the_pixels():
    masks = np.zeros((1, 4, 6), np.uint8)
    masks[0, 1:3, 0:2] = 1
    out = RandomHorizontalFlip(p=1.0)(
        sample_of(np.zeros((4, 6, 3), np.uint8), [[0, 1, 2, 3]], masks=masks),
        np.random.default_rng(0),
    )
    assert np.array_equal(out["masks"][0], masks[0][:, ::-1])
    np.testing.assert_allclose(out["boxes"], [[4, 1, 6, 3]])


def test_multi_scale_picks_one_size_per_batch_and_resumes_exactly():
    base = SyntheticShapes(num_images=24, image_size=32)
    ds = TransformedDataset(base, [MultiScaleResize(sizes=(32, 48, 64, 80))], seed=3)
    sampler = EpochBatchSampler(len(base), 4, seed=3)
    run = iter(sampler)
    batches = [next(run) for _ in range(12)]  # two epochs
    sizes = [{ds[key]["image"].shape[0] for key in batch} for batch in batches]
    assert all(len(s) == 1 for s in sizes)  # one size per batch
    assert len({s.pop() for s in [set(x) for x in sizes]}) > 1  # sizes vary between batches
    resumed = iter(EpochBatchSampler(len(base), 4, seed=3, start_batch=7))
    for batch in batches[7:]:
        again = next(resumed)
        assert again == batch
        assert {ds[k]["image"].shape for k in again} == {ds[k]["image"].shape for k in batch}


def test_multi_scale_range_and_validation():
    assert MultiScaleResize(size_range=(320, 416), step=32).sizes == (320, 352, 384, 416)
    with pytest.raises(ValueError, match="exactly one"):
        MultiScaleResize()


def test_min_iou_crop_patch_meets_the_minimum_iou_and_keeps_centre_inside_boxes():
    image = coordinate_image(60, 80)
    boxes = np.array([[10, 10, 30, 40], [50, 5, 75, 25], [35, 35, 60, 58]], np.float32)
    crop = MinIoURandomCrop(min_ious=(0.3,), min_crop_size=0.3)
    cropped = 0
    for seed in range(40):
        out = crop(sample_of(image, boxes), np.random.default_rng(seed))
        if out["image"].shape == image.shape:
            continue
        cropped += 1
        x0, y0 = int(out["image"][0, 0, 0]), int(out["image"][0, 0, 1])
        h, w = out["image"].shape[:2]
        patch = np.array([x0, y0, x0 + w, y0 + h], np.float32)
        assert patch_iou(patch, boxes).max() >= 0.3
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = ((centres > patch[:2]) & (centres < patch[2:])).all(1)
        expected = boxes[inside] - np.array([x0, y0, x0, y0], np.float32)
        expected[:, 0::2] = expected[:, 0::2].clip(0, w)
        expected[:, 1::2] = expected[:, 1::2].clip(0, h)
        np.testing.assert_allclose(out["boxes"], expected)
        assert out["labels"].tolist() == np.flatnonzero(inside).tolist()
    assert cropped > 0


def test_expand_shifts_boxes_by_the_image_offset():
    image = coordinate_image(20, 30)
    out = Expand(p=1.0, ratio_range=(2.0, 3.0), fill=(0, 0, 0))(
        sample_of(image, [[3, 4, 10, 12]]), np.random.default_rng(1)
    )
    ys, xs = np.nonzero(out["image"][..., 2] == 7)
    left, top = xs.min(), ys.min()
    assert np.array_equal(out["image"][top : top + 20, left : left + 30], image)
    np.testing.assert_allclose(out["boxes"], [[3 + left, 4 + top, 10 + left, 12 + top]])
    assert 40 <= out["image"].shape[0] <= 60 and 60 <= out["image"].shape[1] <= 90


def test_photometric_brightness_only_adds_one_constant():
    image = np.random.default_rng(0).integers(40, 200, (16, 16, 3), dtype=np.uint8)
    t = PhotometricDistortion(brightness=20, contrast=(1, 1), saturation=(1, 1), hue=0)
    deltas = set()
    for seed in range(8):
        out = t(sample_of(image, []), np.random.default_rng(seed))["image"].astype(int)
        diff = np.unique(out - image.astype(int))
        assert len(diff) == 1 and abs(diff[0]) <= 20
        deltas.add(int(diff[0]))
    assert len(deltas) > 1


def test_photometric_zero_saturation_is_the_grey_image():
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    t = PhotometricDistortion(brightness=0, contrast=(1, 1), saturation=(0, 0), hue=0)
    grey = np.array(Image.fromarray(image).convert("L")).astype(int)
    seen = False
    for seed in range(10):
        out = t(sample_of(image, []), np.random.default_rng(seed))["image"].astype(int)
        if (out != image).any():
            seen = True
            assert (out == out[..., :1]).all()
            assert np.abs(out[..., 0] - grey).max() <= 1

    assert seen


def test_cutout_fills_squares_and_keeps_boxes():
    image = np.full((40, 40, 3), 200, np.uint8)
    sample = sample_of(image, [[1, 1, 20, 20]])
    out = Cutout(p=1.0, n_holes=2, size=0.25, fill=0)(sample, np.random.default_rng(2))
    erased = (out["image"] == 0).all(-1)
    assert 0 < erased.sum() <= 2 * 10 * 10
    assert np.array_equal(out["boxes"], sample["boxes"])


def test_random_erasing_area_and_aspect_are_in_range():
    image = np.full((50, 60, 3), 200, np.uint8)
    t = RandomErasing(p=1.0, scale=(0.05, 0.2), ratio=(0.5, 2.0), value=0)
    for seed in range(10):
        erased = (t(sample_of(image, []), np.random.default_rng(seed))["image"] == 0).all(-1)
        rows, cols = np.flatnonzero(erased.any(1)), np.flatnonzero(erased.any(0))
        h, w = len(rows), len(cols)
        assert erased.sum() == h * w  # one rectangle
        assert 0.05 * 3000 * 0.8 <= h * w <= 0.2 * 3000 * 1.2
        assert 0.5 * 0.7 <= h / w <= 2.0 * 1.4


def fetching(sample, others):
    return {**sample, "_fetch": lambda i: dict(others[i]), "_num_samples": len(others)}


def test_mosaic_places_the_first_image_top_left_of_the_centre():
    first = sample_of(coordinate_image(40, 20), [[2, 4, 10, 30]], labels=[5])
    other = sample_of(np.full((30, 30, 3), 9, np.uint8), [[0, 0, 30, 30]], labels=[1])
    t = Mosaic(size=80, center_range=(0.5, 0.5), fill=114)
    out = t(fetching(first, [other]), np.random.default_rng(0))
    # first image: longer side 40 -> 40 (scale 1), bottom-right corner at the centre (40, 40)
    assert np.array_equal(out["image"][0:40, 20:40], first["image"])
    np.testing.assert_allclose(out["boxes"][0], [22, 4, 30, 30])
    # the three others: 30 -> 40 px, one in each other quadrant, boxes = the quadrants
    np.testing.assert_allclose(
        out["boxes"][1:], [[40, 0, 80, 40], [0, 40, 40, 80], [40, 40, 80, 80]]
    )
    assert out["labels"].tolist() == [5, 1, 1, 1]
    assert (out["image"][0:40, 0:20] == 114).all()


def test_mixup_blends_with_lambda_and_keeps_the_union_of_boxes():
    a = sample_of(np.full((20, 20, 3), 200, np.uint8), [[1, 1, 5, 5]], labels=[0])
    b = sample_of(np.full((10, 10, 3), 100, np.uint8), [[2, 2, 8, 8]], labels=[2])
    seed, alpha = 4, 1.5
    out = MixUp(p=1.0, alpha=alpha, fill=0)(fetching(a, [b]), np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    rng.random(), rng.integers(1)
    lam = rng.beta(alpha, alpha)
    assert out["mixup_lambda"] == pytest.approx(lam)
    expected = np.zeros((20, 20), float)
    expected[:] = lam * 200
    expected[:20, :20] += (1 - lam) * 100  # b resized to fit 20x20, at the top-left
    assert np.abs(out["image"][..., 0].astype(float) - expected).max() <= 0.5
    np.testing.assert_allclose(out["boxes"], [[1, 1, 5, 5], [4, 4, 16, 16]])
    assert out["labels"].tolist() == [0, 2]


def test_mixup_lambda_follows_beta():
    a = sample_of(np.zeros((8, 8, 3), np.uint8), [])
    t = MixUp(p=1.0, alpha=2.0)
    lams = np.array(
        [t(fetching(a, [a]), np.random.default_rng(s))["mixup_lambda"] for s in range(2000)]
    )
    assert lams.mean() == pytest.approx(0.5, abs=0.02)
    assert lams.var() == pytest.approx(1 / (4 * (2 * 2.0 + 1)), abs=0.01)  # Var Beta(a, a)


def test_copy_paste_covering_object_hides_the_old_boxes():
    a = sample_of(np.zeros((16, 16, 3), np.uint8), [[2, 2, 6, 6], [8, 8, 14, 14]], labels=[0, 1])
    other_image = np.random.default_rng(0).integers(1, 256, (16, 16, 3), dtype=np.uint8)
    b = sample_of(other_image, [[0, 0, 16, 16]], labels=[2])
    out = CopyPaste(p=1.0, max_objects=1)(fetching(a, [b]), np.random.default_rng(0))
    assert np.array_equal(out["image"], other_image)
    np.testing.assert_allclose(out["boxes"], [[0, 0, 16, 16]])
    assert out["labels"].tolist() == [2]


def test_copy_paste_with_masks_pastes_mask_pixels_and_clears_covered_ones():
    masks = np.zeros((1, 16, 16), np.uint8)
    masks[0, 0:8, 0:8] = 1
    a = sample_of(np.zeros((16, 16, 3), np.uint8), [[0, 0, 8, 8]], labels=[0], masks=masks)
    other_masks = np.zeros((1, 4, 4), np.uint8)
    other_masks[0, 1:3, 1:3] = 1  # a 2x2 object in a 4x4 box
    b = sample_of(np.full((4, 4, 3), 50, np.uint8), [[0, 0, 4, 4]], labels=[3], masks=other_masks)
    out = CopyPaste(p=1.0, max_objects=1, min_visible=0.3)(
        fetching(a, [b]), np.random.default_rng(5)
    )
    new = out["masks"][-1]
    assert new.sum() == 4 and (out["image"][new > 0] == 50).all()
    assert (out["image"][new == 0] == 0).all()  # only mask pixels were pasted
    assert out["labels"].tolist() == [0, 3]
    assert (out["masks"][0] & new).sum() == 0 and out["masks"][0].sum() == 64 - (
        masks[0] & new
    ).sum()


def test_pad_to_divisor_keeps_pixels_and_pads_masks():
    image = np.random.default_rng(0).integers(0, 256, (20, 33, 3), dtype=np.uint8)
    masks = np.ones((2, 20, 33), np.uint8)
    out = Pad(size_divisor=16, fill=3)(
        sample_of(image, [[0, 0, 5, 5], [1, 1, 9, 9]], masks=masks), None
    )
    assert out["image"].shape == (32, 48, 3) and out["masks"].shape == (2, 32, 48)
    assert np.array_equal(out["image"][:20, :33], image) and (out["image"][20:] == 3).all()
    assert out["masks"].sum() == 2 * 20 * 33
