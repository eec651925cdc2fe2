"""Tiles cover the image; a cut box is kept only if enough of it is visible."""

from __future__ import annotations

import numpy as np
import pytest

from tunedet.data import crop_to_tile, make_tiles


def test_tiles_cover_the_image_with_the_last_tile_on_the_border():
    tiles = make_tiles((100, 130), tile_size=60, overlap=0.25)  # (height, width)
    # stride ceil(60 * 0.75) = 45: x starts 0, 45, 70 (border); y starts 0, 40 (border)
    assert tiles == [
        (0, 0, 60, 60),
        (45, 0, 105, 60),
        (70, 0, 130, 60),
        (0, 40, 60, 100),
        (45, 40, 105, 100),
        (70, 40, 130, 100),
    ]
    covered = np.zeros((100, 130), bool)
    for x0, y0, x1, y1 in tiles:
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_image_smaller_than_tile_is_one_tile():
    assert make_tiles((40, 30), tile_size=64) == [(0, 0, 30, 40)]


def test_bad_tile_parameters_are_refused():
    with pytest.raises(ValueError):
        make_tiles((10, 10), tile_size=0)
    with pytest.raises(ValueError):
        make_tiles((10, 10), tile_size=5, overlap=1.0)


def test_cut_box_is_kept_when_visible_fraction_reaches_min_visible():
    boxes = np.array([[50, 10, 70, 30], [55, 10, 75, 30], [0, 0, 10, 10], [80, 80, 90, 90]])
    labels = np.array([0, 1, 2, 3])
    cut = crop_to_tile(boxes, labels, (0, 0, 60, 60), min_visible=0.5)
    assert cut.index.tolist() == [0, 1, 2]  # the last box is not in the tile at all
    np.testing.assert_array_equal(cut.boxes, [[50, 10, 60, 30], [55, 10, 60, 30], [0, 0, 10, 10]])
    assert cut.keep.tolist() == [True, False, True]  # visible 10/20 = 0.5, 5/20 = 0.25, 1
    assert cut.labels.tolist() == [0, 1, 2]
    assert crop_to_tile(boxes, labels, (0, 0, 60, 60), min_visible=0.6).keep.tolist() == [
        False,
        False,
        True,
    ]


def test_boxes_are_shifted_into_tile_coordinates():
    cut = crop_to_tile(np.array([[55, 10, 75, 30]]), np.array([1]), (40, 0, 100, 60), 0.5)
    np.testing.assert_array_equal(cut.boxes, [[15, 10, 35, 30]])
    assert cut.keep.tolist() == [True]


def test_tiled_dataset_trains_on_visible_boxes_and_ignores_cut_ones(make_dataset):
    # 100 x 100 image, tiles of 60 with overlap 0.25: x/y starts 0 and 40.
    objects = [("cat", (50, 10, 70, 30)), ("dog", (55, 10, 75, 30))]
    ds = make_dataset("voc", [("a", 100, 100, objects)], tile_size=60, tile_overlap=0.25)
    assert len(ds) == 4
    assert [ds[i]["file"] for i in range(4)] == [
        "a.png#0,0",
        "a.png#40,0",
        "a.png#0,40",
        "a.png#40,40",
    ]
    first, second = ds[0], ds[1]
    assert first["image"].shape == (60, 60, 3)
    np.testing.assert_array_equal(first["boxes"], [[50, 10, 60, 30]])  # dog only 25% visible
    assert first["labels"].tolist() == [0]
    np.testing.assert_array_equal(second["boxes"], [[10, 10, 30, 30], [15, 10, 35, 30]])
    assert [ds[i]["image_id"] for i in range(4)] == [1, 2, 3, 4]

    gt = ds.coco_ground_truth()
    first_tile = [a for a in gt["annotations"] if a["image_id"] == 1]
    assert [(a["category_id"], a["ignore"], a["bbox"]) for a in first_tile] == [
        (0, 0, [50.0, 10.0, 10.0, 20.0]),
        (1, 1, [55.0, 10.0, 5.0, 20.0]),  # partly visible: an ignore region, not a FP
    ]
    assert gt["images"][1] == {"id": 2, "file_name": "a.png#40,0", "width": 60, "height": 60}


def test_tile_pixels_are_the_crop_of_the_image(make_dataset):
    whole = make_dataset("voc", [("a", 100, 80, [])])[0]["image"]
    tiled = make_dataset("voc", [("a", 100, 80, [])], tile_size=64, tile_overlap=0.0)
    sample = tiled[1]
    assert sample["file"] == "a.png#36,0"
    np.testing.assert_array_equal(sample["image"], whole[0:64, 36:100])
