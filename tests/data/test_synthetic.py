"""The synthetic shapes are deterministic, well-formed, varied, and boxes are tight."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tunedet.data import SHAPES, SyntheticShapes
from tunedet.data.synthetic import MAX_COVER, covered_fraction, draw_shape


def test_same_seed_and_index_give_the_same_pixels_and_boxes():
    a, b = SyntheticShapes(seed=3), SyntheticShapes(seed=3)
    b[7]  # access order does not matter
    for index in (0, 5, 11):
        x, y = a[index], b[index]
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["boxes"], y["boxes"])
        np.testing.assert_array_equal(x["labels"], y["labels"])


def test_different_index_or_seed_gives_a_different_image():
    ds = SyntheticShapes(seed=0)
    assert not np.array_equal(ds[0]["image"], ds[1]["image"])
    assert not np.array_equal(ds[0]["image"], SyntheticShapes(seed=1)[0]["image"])


def test_sample_fields_and_types():
    sample = SyntheticShapes(image_size=96)[4]
    assert sample["image"].shape == (96, 96, 3) and sample["image"].dtype == np.uint8
    assert sample["boxes"].dtype == np.float32 and sample["labels"].dtype == np.int64
    assert sample["image_id"] == 5 and sample["file"] == "000004.png"


def test_boxes_are_inside_the_image_with_positive_area_and_valid_labels():
    ds = SyntheticShapes(num_images=300, num_classes=5)
    for index in range(len(ds)):
        boxes, labels = ds.geometry(index)
        assert ((boxes >= 0) & (boxes <= 128)).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) > 0).all()
        assert ((labels >= 0) & (labels < 5)).all()
    assert ds.classes == list(SHAPES)


def test_default_settings_give_some_empty_images_and_every_class():
    ds = SyntheticShapes()
    counts = [len(ds.geometry(i)[1]) for i in range(len(ds))]
    empty = counts.count(0)
    assert 0 < empty < 0.15 * len(ds)
    labels = np.concatenate([ds.geometry(i)[1] for i in range(len(ds))])
    assert set(labels.tolist()) == {0, 1, 2}


def test_object_sizes_span_min_size_to_over_half_the_image():
    ds = SyntheticShapes()
    boxes = np.concatenate([ds.geometry(i)[0] for i in range(len(ds))])
    sides = boxes[:, 2:] - boxes[:, :2]
    assert sides.min() >= 8
    assert sides.min(axis=1).min() <= 9
    assert sides.max() > 0.5 * 128
    assert sides.max() <= 0.7 * 128


def test_no_object_covers_most_of_an_earlier_one():
    ds = SyntheticShapes(num_images=200, max_objects=10)
    for index in range(len(ds)):
        boxes, _ = ds.geometry(index)
        for k in range(1, len(boxes)):
            assert (covered_fraction(boxes[k : k + 1], boxes[:k]) <= MAX_COVER + 1e-6).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_box_is_the_tight_box_of_the_drawn_shape(shape):
    rng = np.random.default_rng(1)
    for _ in range(60):
        w, h = (int(v) for v in rng.integers(2, 80, 2))
        x0, y0 = int(rng.integers(0, 100 - w)), int(rng.integers(0, 100 - h))
        mask = Image.new("L", (100, 100))
        draw_shape(ImageDraw.Draw(mask), shape, np.array([x0, y0, x0 + w, y0 + h]), 255)
        on = np.asarray(mask) > 0
        cols, rows = np.flatnonzero(on.any(0)), np.flatnonzero(on.any(1))
        assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == (x0, y0, x0 + w, y0 + h)


def test_ground_truth_matches_the_samples_without_rendering():
    ds = SyntheticShapes(num_images=8, seed=2)
    gt = ds.coco_ground_truth()
    assert [img["id"] for img in gt["images"]] == list(range(1, 9))
    assert gt["categories"] == [{"id": i, "name": n} for i, n in enumerate(SHAPES[:3])]
    for index in range(8):
        sample = ds[index]
        anns = [a for a in gt["annotations"] if a["image_id"] == sample["image_id"]]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        np.testing.assert_array_equal(np.reshape(xyxy, (-1, 4)), sample["boxes"])
        assert [a["category_id"] for a in anns] == sample["labels"].tolist()


def test_min_size_larger_than_max_size_is_refused():
    with pytest.raises(ValueError, match="min_size"):
        SyntheticShapes(image_size=32, min_size=30, max_size_frac=0.5)
