"""write_coco output reads back through CocoDataset with the same pixels, boxes and labels."""

from __future__ import annotations

import json

import numpy as np

from tunedet.data import CocoDataset, SyntheticShapes, write_coco


def test_synthetic_round_trip_through_coco_files(tmp_path):
    synth = SyntheticShapes(num_images=6, image_size=64, seed=4, num_classes=4)
    ann_file = write_coco(synth, tmp_path)
    assert ann_file == tmp_path / "annotations.json"
    back = CocoDataset(str(ann_file), str(tmp_path / "images"))
    assert back.classes == synth.classes
    assert len(back) == len(synth) and not back.report
    for index in range(len(synth)):
        original, read = synth[index], back[index]
        assert read["image_id"] == original["image_id"]
        np.testing.assert_array_equal(read["image"], original["image"])
        np.testing.assert_array_equal(read["boxes"], original["boxes"])
        np.testing.assert_array_equal(read["labels"], original["labels"])
    keys = ("image_id", "category_id", "bbox", "iscrowd")
    assert [{k: a[k] for k in keys} for a in back.coco_ground_truth()["annotations"]] == [
        {k: a[k] for k in keys} for a in synth.coco_ground_truth()["annotations"]
    ]


def test_max_images_limits_what_is_written(tmp_path):
    write_coco(SyntheticShapes(num_images=10, image_size=32), tmp_path, max_images=3)
    doc = json.loads((tmp_path / "annotations.json").read_text())
    assert [img["file_name"] for img in doc["images"]] == ["000000.png", "000001.png", "000002.png"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "000000.png",
        "000001.png",
        "000002.png",
    ]
    assert {a["image_id"] for a in doc["annotations"]} <= {1, 2, 3}


def test_tiles_are_written_as_separate_images(tmp_path, make_dataset):
    objects = [("cat", (50, 10, 70, 30)), ("dog", (55, 10, 75, 30))]
    tiled = make_dataset("voc", [("a", 100, 100, objects)], tile_size=60)
    write_coco(tiled, tmp_path / "out")
    back = CocoDataset(str(tmp_path / "out" / "annotations.json"), str(tmp_path / "out" / "images"))
    assert len(back) == 4
    assert back[0]["file"] == "a_png_0_0.png"
    for index in range(4):
        np.testing.assert_array_equal(back[index]["boxes"], tiled[index]["boxes"])
    ignored = [a["ignore"] for a in back.coco_ground_truth()["annotations"] if a["image_id"] == 1]
    assert ignored == [0, 1]
