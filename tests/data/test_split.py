"""``tunedet data split``: seeded train/val splits of COCO, VOC and YOLO data that
``data=OUT`` reads back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunedet.cli.main import main
from tunedet.config.loader import load_config
from tunedet.data.build import build_dataset
from tunedet.data.split import split_dataset, split_indices


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)


def test_split_indices_are_seeded_disjoint_and_complete():
    train, val = split_indices(10, 0.3, seed=1)
    assert len(val) == 3 and sorted(train + val) == list(range(10))
    assert split_indices(10, 0.3, seed=1) == (train, val)
    assert split_indices(10, 0.3, seed=2) != (train, val)
    assert split_indices(2, 0.01, seed=0)[1]  # at least one val image


def test_coco_split_keeps_each_image_with_its_boxes(tmp_path: Path, capsys):
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}
    for i in range(1, 6):
        _image(tmp_path / "src" / f"{i}.png")
        doc["images"].append({"id": i, "file_name": f"{i}.png", "width": 32, "height": 32})
        for k in range(i):  # image i has i boxes
            box = [1 + k, 1, 8, 8]
            doc["annotations"].append(
                {"id": len(doc["annotations"]) + 1, "image_id": i, "bbox": box, "category_id": 1}
            )
    (tmp_path / "src" / "ann.json").write_text(json.dumps(doc))
    out = tmp_path / "split"
    argv = ["data", "split", str(tmp_path / "src" / "ann.json"), str(out), "--val", "0.4"]
    assert main([*argv, "--seed", "3"]) == 0
    assert "wrote 3 train and 2 val images" in capsys.readouterr().out
    halves = [
        json.loads((out / s / "_annotations.coco.json").read_text()) for s in ("train", "val")
    ]
    ids = [{im["id"] for im in half["images"]} for half in halves]
    assert ids[0] | ids[1] == {1, 2, 3, 4, 5} and not ids[0] & ids[1]
    for half, chosen in zip(halves, ids, strict=True):
        assert len(half["annotations"]) == sum(chosen)  # every box of each image, no other
    cfg = load_config("retinanet/demo", [f"data={out}"])
    assert len(build_dataset(cfg.data.val)) == 2
    assert main([*argv, "--seed", "3"]) == 2  # never over an existing split
    assert "nothing is overwritten" in capsys.readouterr().err


def test_voc_and_yolo_splits_are_read_back_by_data(tmp_path: Path):
    for i in range(4):
        _image(tmp_path / "voc" / f"v{i}.png")
        (tmp_path / "voc" / f"v{i}.xml").write_text(
            f"<annotation><filename>v{i}.png</filename><object><name>tree</name>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
            "</object></annotation>"
        )
        _image(tmp_path / "yolo" / "images" / f"y{i}.png")
        (tmp_path / "yolo" / "labels").mkdir(exist_ok=True)
        (tmp_path / "yolo" / "labels" / f"y{i}.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    assert split_dataset(tmp_path / "voc", tmp_path / "voc_split", 0.25) == {"train": 3, "val": 1}
    cfg = load_config("retinanet/demo", [f"data={tmp_path / 'voc_split'}"])
    assert cfg.data.train.type == "voc" and cfg.model.num_classes == 1
    assert len(build_dataset(cfg.data.train)) == 3

    with pytest.raises(ValueError, match="name the classes"):
        split_dataset(tmp_path / "yolo", tmp_path / "y0", 0.5)
    split_dataset(tmp_path / "yolo", tmp_path / "yolo_split", 0.5, names=["a", "b"])
    cfg = load_config("retinanet/demo", [f"data={tmp_path / 'yolo_split'}"])
    assert cfg.data.val.classes == ["a", "b"]
    assert build_dataset(cfg.data.val)[0]["labels"].tolist() == [1]
