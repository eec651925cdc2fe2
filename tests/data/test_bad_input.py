"""Bad input is repaired or skipped and counted, or, in strict mode, a DataError naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunedet.data import BadInputReport, DataError, VOCDataset
from tunedet.data.bad_input import (
    BOX_CLIPPED,
    MALFORMED_ANNOTATION_SKIPPED,
    UNKNOWN_CLASS_DROPPED,
    UNREADABLE_IMAGE_SKIPPED,
    ZERO_AREA_DROPPED,
)

FORMATS = ["voc", "coco", "yolo"]
ANNOTATION_FILE = {"voc": "a.xml", "coco": "annotations.json", "yolo": "a.txt"}
GOOD = ("b", 40, 30, [("dog", (2, 3, 12, 13))])  # keeps every dataset non-empty


def truncate_file(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_report_counts_by_reason_and_keeps_first_example():
    report = BadInputReport()
    report.record(BOX_CLIPPED, "a.xml:7", "box 1")
    report.record(BOX_CLIPPED, "b.xml:9", "box 2")
    report.record(ZERO_AREA_DROPPED, "c.xml:3")
    assert report.counts == {BOX_CLIPPED: 2, ZERO_AREA_DROPPED: 1}
    assert report.total == 2 + 1
    lines = report.summary().splitlines()
    assert lines == [
        f"2 x {BOX_CLIPPED} (first: a.xml:7: box 1)",
        f"1 x {ZERO_AREA_DROPPED} (first: c.xml:3)",
    ]


def test_strict_report_raises_one_line_data_error():
    report = BadInputReport(strict=True)
    with pytest.raises(DataError, match=r"^a\.xml:7: box clipped to image: box\s1$") as err:
        report.record(BOX_CLIPPED, "a.xml:7", "box\n1")
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("fmt", FORMATS)
def test_box_outside_image_is_clipped_and_counted(make_dataset, fmt):
    ds = make_dataset(fmt, [("a", 40, 30, [("cat", (-5, 10, 20, 35))]), GOOD])
    np.testing.assert_allclose(ds[0]["boxes"], [[0, 10, 20, 30]], atol=1e-4)
    assert ds.report.counts[BOX_CLIPPED] == 1
    assert ANNOTATION_FILE[fmt] in ds.report.examples[BOX_CLIPPED]


@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_area_box_is_dropped_and_counted(make_dataset, fmt):
    ds = make_dataset(fmt, [("a", 40, 30, [("cat", (5, 5, 5, 20)), ("dog", (1, 1, 9, 9))]), GOOD])
    assert ds[0]["labels"].tolist() == [1]
    assert ds.report.counts[ZERO_AREA_DROPPED] == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_box_entirely_outside_image_is_dropped_as_zero_area(make_dataset, fmt):
    ds = make_dataset(fmt, [("a", 40, 30, [("cat", (50, 5, 60, 20))]), GOOD])
    assert len(ds[0]["boxes"]) == 0
    assert ds.report.counts == {ZERO_AREA_DROPPED: 1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_class_is_dropped_and_counted(make_dataset, fmt):
    ds = make_dataset(fmt, [("a", 40, 30, [("bird", (1, 1, 9, 9)), ("cat", (2, 2, 8, 8))]), GOOD])
    assert ds[0]["labels"].tolist() == [0]
    assert ds.classes == ["cat", "dog"]
    assert ds.report.counts[UNKNOWN_CLASS_DROPPED] == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_corrupt_image_is_skipped_and_counted(make_dataset, fmt):
    ds = make_dataset(
        fmt,
        [("a", 40, 30, [("cat", (1, 1, 9, 9))]), GOOD],
        damage=lambda root: truncate_file(root / "a.png"),
    )
    assert len(ds) == 1
    assert ds[0]["file"] == "b.png"
    assert ds.report.counts[UNREADABLE_IMAGE_SKIPPED] == 1
    assert "a.png" in ds.report.examples[UNREADABLE_IMAGE_SKIPPED]


@pytest.mark.parametrize("fmt", FORMATS)
def test_image_that_is_not_an_image_is_skipped(make_dataset, fmt):
    ds = make_dataset(
        fmt,
        [("a", 40, 30, []), GOOD],
        damage=lambda root: (root / "a.png").write_bytes(b"not an image"),
    )
    assert [ds[i]["file"] for i in range(len(ds))] == ["b.png"]
    assert ds.report.counts[UNREADABLE_IMAGE_SKIPPED] == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_image_is_a_valid_sample(make_dataset, fmt):
    ds = make_dataset(fmt, [("a", 40, 30, []), GOOD])
    sample = ds[0]
    assert sample["image"].shape == (30, 40, 3) and sample["image"].dtype == np.uint8
    assert sample["boxes"].shape == (0, 4) and sample["boxes"].dtype == np.float32
    assert sample["labels"].shape == (0,) and sample["labels"].dtype == np.int64
    assert not ds.report


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "objects",
    [
        [("cat", (-5, 10, 20, 35))],  # outside
        [("cat", (5, 5, 5, 20))],  # zero area
        [("bird", (1, 1, 9, 9))],  # unknown class
    ],
    ids=["box-outside", "zero-area", "unknown-class"],
)
def test_strict_mode_raises_naming_the_annotation_file(make_dataset, fmt, objects):
    with pytest.raises(DataError) as err:
        make_dataset(fmt, [("a", 40, 30, objects), GOOD], strict=True)
    message = str(err.value)
    assert ANNOTATION_FILE[fmt] in message and "\n" not in message
    if fmt in ("voc", "yolo"):
        assert f"{ANNOTATION_FILE[fmt]}:" in message  # with the line number


@pytest.mark.parametrize("fmt", FORMATS)
def test_strict_mode_raises_on_corrupt_image_naming_it(make_dataset, fmt):
    with pytest.raises(DataError, match=r"a\.png.*unreadable image skipped"):
        make_dataset(
            fmt,
            [("a", 40, 30, []), GOOD],
            strict=True,
            damage=lambda root: truncate_file(root / "a.png"),
        )


@pytest.mark.parametrize("fmt", FORMATS)
def test_strict_mode_accepts_clean_data(make_dataset, fmt):
    ds = make_dataset(fmt, [("a", 40, 30, [("cat", (0, 0, 40, 30))]), GOOD], strict=True)
    assert len(ds) == 2 and not ds.report


def test_header_check_defers_corrupt_image_to_a_named_error_at_load(make_dataset):
    ds = make_dataset(
        "voc",
        [("a", 40, 30, []), GOOD],
        damage=lambda root: truncate_file(root / "a.png"),
        check_images="header",
    )
    assert len(ds) == 2
    with pytest.raises(DataError, match=r"a\.png: unreadable image"):
        ds[0]


# --------------------------------------------------------------- malformed annotation files


def break_xml(root):
    (root / "a.xml").write_text(
        "<annotation>\n  <filename>a.png</filename>\n  <object>\n</annotation>\n"
    )


def test_malformed_xml_is_skipped_with_file_and_line(make_dataset):
    ds = make_dataset("voc", [("a", 40, 30, []), GOOD], damage=break_xml)
    assert [ds[i]["file"] for i in range(len(ds))] == ["b.png"]
    assert ds.report.counts[MALFORMED_ANNOTATION_SKIPPED] == 1
    assert (
        "a.xml:4: XML parse error: mismatched tag"
        in ds.report.examples[MALFORMED_ANNOTATION_SKIPPED]
    )


def test_malformed_xml_in_strict_mode_raises_with_file_and_line(make_dataset):
    with pytest.raises(DataError, match=r"a\.xml:4: malformed annotation skipped: XML parse error"):
        make_dataset("voc", [("a", 40, 30, []), GOOD], strict=True, damage=break_xml)


def test_voc_object_with_bad_coordinate_is_skipped_naming_its_line(make_dataset):
    def damage(root):
        text = (root / "a.xml").read_text().replace("<xmin>1</xmin>", "<xmin>one</xmin>")
        (root / "a.xml").write_text(text)

    ds = make_dataset(
        "voc", [("a", 40, 30, [("cat", (1, 1, 9, 9)), ("dog", (2, 2, 9, 9))]), GOOD], damage=damage
    )
    assert ds[0]["labels"].tolist() == [1]
    assert (
        "a.xml:4 (object 0): <bndbox>: <xmin> is 'one'"
        in ds.report.examples[MALFORMED_ANNOTATION_SKIPPED]
    )


@pytest.mark.parametrize("strict", [False, True])
def test_malformed_json_raises_naming_file_and_line(make_dataset, strict):
    def damage(root):
        text = json.dumps({"images": [{"id": 1}], "categories": []}, indent=1)
        (root / "annotations.json").write_text(text.replace('"id": 1', '"id": 1,,'))

    with pytest.raises(DataError, match=r"annotations\.json:4: malformed annotation file"):
        make_dataset("coco", [GOOD], strict=strict, damage=damage)


def test_coco_annotation_with_bad_bbox_is_skipped_naming_its_id(make_dataset):
    def damage(root):
        doc = json.loads((root / "annotations.json").read_text())
        doc["annotations"][0]["bbox"] = [1, 2, "x"]
        (root / "annotations.json").write_text(json.dumps(doc))

    ds = make_dataset(
        "coco", [("a", 40, 30, [("cat", (1, 1, 9, 9)), ("dog", (1, 1, 5, 5))]), GOOD], damage=damage
    )
    assert ds[0]["labels"].tolist() == [1]
    assert "annotations.json (annotation id 1)" in ds.report.examples[MALFORMED_ANNOTATION_SKIPPED]
    with pytest.raises(DataError, match=r"annotations\.json \(annotation id 1\): malformed"):
        make_dataset(
            "coco", [("a", 40, 30, [("cat", (1, 1, 9, 9))]), GOOD], strict=True, damage=damage
        )


def add_bad_yolo_lines(root):
    with open(root / "a.txt", "a") as f:
        f.write("0 0.5 0.5 0.2\n")  # line 2: four fields
        f.write("cat 0.5 0.5 0.2 0.2\n")  # line 3: class is not a number


def test_bad_yolo_line_is_skipped_naming_file_and_line(make_dataset):
    ds = make_dataset(
        "yolo", [("a", 40, 30, [("dog", (2, 2, 10, 10))]), GOOD], damage=add_bad_yolo_lines
    )
    assert ds[0]["labels"].tolist() == [1]
    assert ds.report.counts[MALFORMED_ANNOTATION_SKIPPED] == 2
    assert "a.txt:2" in ds.report.examples[MALFORMED_ANNOTATION_SKIPPED]


def test_bad_yolo_line_in_strict_mode_raises_naming_file_and_line(make_dataset):
    with pytest.raises(DataError, match=r"a\.txt:2: malformed annotation skipped"):
        make_dataset(
            "yolo",
            [("a", 40, 30, [("dog", (2, 2, 10, 10))]), GOOD],
            strict=True,
            damage=add_bad_yolo_lines,
        )


def test_yolo_folder_without_any_label_file_is_an_error(tmp_path, datafiles):
    from tunedet.data import YOLODataset

    datafiles.write_png(tmp_path / "a.png", 8, 8)
    with pytest.raises(DataError, match="no YOLO label file"):
        YOLODataset(str(tmp_path), classes=["cat"])


def test_dataset_without_usable_image_is_an_error_listing_problems(tmp_path, datafiles):
    (tmp_path / "a.xml").write_text(datafiles.voc_xml("a.png", 10, 10, []))
    with pytest.raises(DataError, match=r"no usable image; problems: 1 x missing image skipped"):
        VOCDataset(str(tmp_path))


def test_reader_logs_the_summary_once(make_dataset, caplog):
    make_dataset("voc", [("a", 40, 30, [("cat", (-5, 10, 20, 35)), ("cat", (-1, 0, 4, 4))]), GOOD])
    messages = [r.getMessage() for r in caplog.records if r.name == "tunedet.data"]
    assert len(messages) == 1
    assert f"2 x {BOX_CLIPPED}" in messages[0]
