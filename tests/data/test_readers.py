"""What each reader makes of well-formed input: boxes, labels, ids, flags, layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunedet.config.registry import REGISTRIES
from tunedet.data import DataError, VOCDataset, YOLODataset
from tunedet.data.bad_input import IMAGE_FOUND_BY_STEM, SIZE_MISMATCH


def test_readers_and_transforms_are_registered():
    assert {"coco", "voc", "yolo", "synthetic"} <= set(REGISTRIES["dataset"].names())
    assert {"hflip", "vflip", "resize", "normalize"} <= set(REGISTRIES["transform"].names())


@pytest.mark.parametrize("fmt", ["voc", "coco", "yolo"])
def test_sample_has_the_architecture_fields_and_types(make_dataset, fmt):
    ds = make_dataset(fmt, [("a", 40, 30, [("dog", (2, 3, 12, 13)), ("cat", (20, 5, 39, 29))])])
    sample = ds[0]
    assert set(sample) == {"image", "boxes", "labels", "image_id", "file"}
    assert sample["image"].shape == (30, 40, 3) and sample["image"].dtype == np.uint8
    np.testing.assert_allclose(sample["boxes"], [[2, 3, 12, 13], [20, 5, 39, 29]], atol=1e-4)
    assert sample["boxes"].dtype == np.float32
    assert sample["labels"].tolist() == [1, 0] and sample["labels"].dtype == np.int64
    assert sample["file"] == "a.png" and sample["image_id"] == 1


def test_coco_maps_sorted_category_ids_to_contiguous_labels(make_dataset):
    # conftest categories: cat id 3, dog id 7 -> labels 0, 1
    ds = make_dataset("coco", [("a", 40, 30, [("dog", (2, 3, 12, 13)), ("cat", (1, 1, 5, 5))])])
    assert ds.classes == ["cat", "dog"]
    assert ds[0]["labels"].tolist() == [1, 0]
    gt = ds.coco_ground_truth()
    assert gt["categories"] == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]
    assert [a["category_id"] for a in gt["annotations"]] == [1, 0]
    assert gt["annotations"][0]["bbox"] == [2.0, 3.0, 10.0, 10.0]


def test_coco_classes_argument_orders_and_filters_categories(make_dataset):
    ds = make_dataset(
        "coco", [("a", 40, 30, [("dog", (2, 3, 12, 13)), ("cat", (1, 1, 5, 5))])], classes=["dog"]
    )
    assert ds.classes == ["dog"]
    assert ds[0]["labels"].tolist() == [0]
    assert ds.report.counts == {"unknown class dropped": 1}


def test_coco_crowd_box_is_kept_out_of_training_but_in_ground_truth(make_dataset, datafiles):
    def damage(root):
        doc = json.loads((root / "annotations.json").read_text())
        doc["annotations"][0]["iscrowd"] = 1
        doc["images"][0]["id"] = 42
        for ann in doc["annotations"]:
            ann["image_id"] = 42
        (root / "annotations.json").write_text(json.dumps(doc))

    ds = make_dataset(
        "coco", [("a", 40, 30, [("dog", (2, 3, 12, 13)), ("cat", (1, 1, 5, 5))])], damage=damage
    )
    sample = ds[0]
    assert sample["image_id"] == 42  # the file's own image id
    assert sample["labels"].tolist() == [0]
    gt = ds.coco_ground_truth()
    assert [a["iscrowd"] for a in gt["annotations"]] == [1, 0]
    assert {a["image_id"] for a in gt["annotations"]} == {42}
    assert gt["images"] == [{"id": 42, "file_name": "a.png", "width": 40, "height": 30}]


def test_coco_wrong_annotated_size_is_counted_and_file_size_used(make_dataset):
    def damage(root):
        doc = json.loads((root / "annotations.json").read_text())
        doc["images"][0]["width"] = 400
        (root / "annotations.json").write_text(json.dumps(doc))

    ds = make_dataset("coco", [("a", 40, 30, [("dog", (2, 3, 12, 13))])], damage=damage)
    assert ds.report.counts == {SIZE_MISMATCH: 1}
    assert ds.coco_ground_truth()["images"][0]["width"] == 40


def test_voc_difficult_objects_are_ignored_in_training_and_flagged_in_ground_truth(
    tmp_path, datafiles
):
    datafiles.write_png(tmp_path / "a.png", 40, 30)
    objects = [("cat", (1, 1, 9, 9)), ("dog", (10, 10, 20, 20))]
    (tmp_path / "a.xml").write_text(datafiles.voc_xml("a.png", 40, 30, objects, difficult=(1,)))
    ds = VOCDataset(str(tmp_path))
    assert ds[0]["labels"].tolist() == [0]
    anns = ds.coco_ground_truth()["annotations"]
    assert [(a["difficult"], a["ignore"]) for a in anns] == [(0, 0), (1, 1)]
    assert VOCDataset(str(tmp_path), use_difficult=True)[0]["labels"].tolist() == [0, 1]


def test_voc_classes_default_to_sorted_names_found(tmp_path, datafiles):
    for stem, name in (("a", "zebra"), ("b", "ant")):
        datafiles.write_png(tmp_path / f"{stem}.png", 20, 20)
        xml = datafiles.voc_xml(f"{stem}.png", 20, 20, [(name, (1, 1, 5, 5))])
        (tmp_path / f"{stem}.xml").write_text(xml)
    ds = VOCDataset(str(tmp_path))
    assert ds.classes == ["ant", "zebra"]
    assert [ds[i]["labels"].tolist() for i in range(2)] == [[1], [0]]


def test_voc_keeps_coordinates_as_written(make_dataset):
    ds = make_dataset("voc", [("a", 40, 30, [("cat", (1, 1, 40, 30))])])
    np.testing.assert_array_equal(ds[0]["boxes"], [[1, 1, 40, 30]])


def test_voc_files_and_exclude_select_annotations(make_dataset):
    images = [(s, 20, 20, [("cat", (1, 1, 5, 5))]) for s in ("a", "b", "c")]
    ds = make_dataset("voc", images, files=["a", "c.xml"])
    assert [ds[i]["file"] for i in range(len(ds))] == ["a.png", "c.png"]
    ds = make_dataset("voc", images, exclude=["b"])
    assert [ds[i]["file"] for i in range(len(ds))] == ["a.png", "c.png"]
    with pytest.raises(DataError, match="no annotation file for d"):
        make_dataset("voc", images, files=["d"])


def test_voc_devkit_layout_and_image_found_by_stem(tmp_path, datafiles):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    datafiles.write_png(tmp_path / "JPEGImages" / "a.png", 20, 20)
    xml = datafiles.voc_xml("a.jpg", 20, 20, [("cat", (1, 1, 5, 5))])  # names a .jpg
    (tmp_path / "Annotations" / "a.xml").write_text(xml)
    ds = VOCDataset(str(tmp_path))
    assert ds[0]["file"] == "a.png"
    assert ds.report.counts == {IMAGE_FOUND_BY_STEM: 1}
    assert "'a.jpg' not found, using a.png" in ds.report.examples[IMAGE_FOUND_BY_STEM]


def test_yolo_converts_normalised_centre_size_to_pixels(tmp_path, datafiles):
    datafiles.write_png(tmp_path / "a.png", 200, 100)
    (tmp_path / "a.txt").write_text("1 0.25 0.5 0.1 0.2\n\n0 0.5 0.5 1 1\n")
    ds = YOLODataset(str(tmp_path), classes=["cat", "dog"])
    np.testing.assert_allclose(ds[0]["boxes"], [[40, 40, 60, 60], [0, 0, 200, 100]], atol=1e-4)
    assert ds[0]["labels"].tolist() == [1, 0]


def test_yolo_image_without_label_file_is_a_background_image(tmp_path, datafiles):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    datafiles.write_png(images / "a.png", 20, 20)
    datafiles.write_png(images / "b.png", 20, 20)
    (labels / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    ds = YOLODataset(str(images), classes=["cat"])  # labels/ found beside images/
    assert [len(ds[i]["boxes"]) for i in range(2)] == [1, 0]
    assert not ds.report
