"""Inputs that used to give wrong pixels, wrong labels or a traceback: 16-bit and float
images, EXIF orientation, duplicated category ids, absurd ids, a directory as ann_file,
deeply nested JSON, a bad image read in a DataLoader worker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunedet.data import CocoDataset, DataError, YOLODataset
from tunedet.data.annotated_images import load_rgb, read_image_size
from tunedet.data.build import build_loader


def test_16_bit_png_is_scaled_to_8_bits_not_saturated(tmp_path: Path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 257, 32896], [65535, 1000, 60000]], np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = load_rgb(path, "deep.png")
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    expected = np.rint(values / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    np.testing.assert_array_equal(rgb[..., 2], expected)


def test_float_image_in_unit_range_is_scaled_and_out_of_range_refused(tmp_path: Path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)).save(path)
    np.testing.assert_array_equal(load_rgb(path, "float.tif")[..., 1], [[0, 128], [255, 64]])
    Image.fromarray(np.array([[-3.0, 900.0]], np.float32)).save(path)
    with pytest.raises(DataError, match=r"^float\.tif: float image with values -3\.\.900"):
        load_rgb(path, "float.tif")


def test_exif_orientation_is_applied_to_pixels_and_size(tmp_path: Path):
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:, :10] = 255  # a white band on the stored left
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # shown rotated 90° clockwise: 20 wide, 40 high, band on top
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=95)
    assert read_image_size(path, full=True) == (20, 40)
    rgb = load_rgb(path, "phone.jpg")
    assert rgb.shape == (40, 20, 3)
    assert rgb[:10].mean() > 200 and rgb[15:].mean() < 50
    # YOLO boxes are normalised by the shown size, as ultralytics does
    (tmp_path / "phone.txt").write_text("0 0.5 0.125 1.0 0.25\n")
    dataset = YOLODataset(str(tmp_path), classes=["band"])
    np.testing.assert_allclose(dataset[0]["boxes"], [[0, 0, 20, 10]])


def _coco(tmp_path: Path, doc: dict) -> Path:
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path


def test_duplicated_category_id_is_refused_naming_both_names(tmp_path: Path):
    doc = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [],
        "categories": [{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}],
    }
    path = _coco(tmp_path, doc)
    with pytest.raises(
        DataError, match=r"ann\.json: category id 1 is used twice \('cat' and 'dog'\)"
    ):
        CocoDataset(str(path), str(tmp_path))


def test_huge_ids_are_counted_not_a_traceback(tmp_path: Path):
    text = (
        '{"images": [{"id": 1e400, "file_name": "a.png"}, {"id": 2, "file_name": "a.png"}],'
        ' "annotations": [{"id": 1, "image_id": 1e400, "category_id": 1, "bbox": [1, 1, 4, 4]}],'
        ' "categories": [{"id": 1e400, "name": "x"}, {"id": 1, "name": "cat"}]}'
    )
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "ann.json").write_text(text)
    dataset = CocoDataset(str(tmp_path / "ann.json"), str(tmp_path))
    assert len(dataset) == 1 and dataset.classes == ["cat"]
    assert dataset.report.total == 3  # the image, its annotation, the category
    with pytest.raises(DataError, match=r"ann\.json \(category 0\).*id inf"):
        CocoDataset(str(tmp_path / "ann.json"), str(tmp_path), strict=True)


def test_ann_file_that_is_a_directory_or_nested_too_deeply_is_one_line(tmp_path: Path):
    with pytest.raises(DataError, match=r"^\S+: cannot read annotation file \(Is a directory\)$"):
        CocoDataset(str(tmp_path), str(tmp_path))
    path = tmp_path / "deep.json"
    path.write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(
        DataError, match=r"deep\.json: malformed annotation file: nested too deeply"
    ):
        CocoDataset(str(path), str(tmp_path))


def test_bad_image_in_a_worker_names_the_file_not_the_worker(tmp_path: Path):
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    dataset = YOLODataset(str(tmp_path), classes=["x"], check_images="header")
    (tmp_path / "a.png").write_bytes((tmp_path / "a.png").read_bytes()[:200])  # truncated
    loader = build_loader(dataset, [], seed=0, batch_size=1, num_workers=1)
    with pytest.raises(DataError) as info:
        next(iter(loader))
    message = str(info.value)
    assert message.startswith("a.png: unreadable image")
    assert "worker" not in message and "\n" not in message


def test_predict_and_infer_read_16_bit_images_as_training_does(tmp_path: Path):
    from tunedet.api import read_rgb

    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(path)
    np.testing.assert_array_equal(read_rgb(path), np.full((4, 4, 3), 128, np.uint8))
    np.testing.assert_array_equal(read_rgb(Image.open(path)), read_rgb(path))
    with pytest.raises(DataError, match=r"missing\.png: unreadable image"):
        read_rgb(tmp_path / "missing.png")
