"""``data=PATH``: ultralytics dataset YAMLs and dataset folders as both splits, the class
names and the class count."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunedet.config.loader import ConfigError, load_config
from tunedet.data.build import build_dataset

DEMO = "retinanet/demo"


def write_ultralytics(root: Path, names_yaml: str = "names: {0: cat, 1: dog}") -> Path:
    """``root/images/{train,val}/*.png`` + ``root/labels/{train,val}/*.txt`` + data.yaml."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(
                root / "images" / split / f"{split}{k}.png"
            )
            (root / "labels" / split / f"{split}{k}.txt").write_text(f"{k} 0.5 0.5 0.5 0.25\n")
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: .\ntrain: images/train\nval: images/val\n{names_yaml}\n")
    return data_yaml


def test_ultralytics_yaml_sets_both_splits_names_and_count(tmp_path: Path, monkeypatch):
    data_yaml = write_ultralytics(tmp_path / "ds")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(DEMO, ["data=ds/data.yaml", "data.batch_size=2"])
    assert cfg.model.num_classes == 2
    assert cfg.data.train.type == cfg.data.val.type == "yolo"
    assert cfg.data.train.img_dir == str(data_yaml.parent / "images" / "train")
    assert cfg.data.val.classes == ["cat", "dog"]
    assert cfg.data.batch_size == 2 and cfg.data.val_transforms  # other data keys kept
    train = build_dataset(cfg.data.train)  # labels found in labels/train, not beside
    sample = train[1]
    assert sample["labels"].tolist() == [1]
    np.testing.assert_allclose(sample["boxes"], [[15, 15, 45, 25]])


def test_ultralytics_names_list_nc_and_their_contradictions(tmp_path: Path):
    write_ultralytics(tmp_path / "a", "names: [cat, dog, fox]")
    assert load_config(DEMO, [f"data={tmp_path / 'a' / 'data.yaml'}"]).model.num_classes == 3
    write_ultralytics(tmp_path / "b", "nc: 2")
    cfg = load_config(DEMO, [f"data={tmp_path / 'b'}"])  # the folder holding data.yaml
    assert cfg.data.train.classes == ["0", "1"]
    write_ultralytics(tmp_path / "c", "nc: 3\nnames: [cat, dog]")
    with pytest.raises(ConfigError, match=r"data\.yaml: nc is 3 but names lists 2 classes"):
        load_config(DEMO, [f"data={tmp_path / 'c' / 'data.yaml'}"])


def test_data_override_then_a_contradicting_num_classes_is_refused(tmp_path: Path):
    data_yaml = write_ultralytics(tmp_path / "ds")
    for order in (
        ["model.num_classes=5", f"data={data_yaml}"],
        [f"data={data_yaml}", "model.num_classes=5"],
    ):
        with pytest.raises(ConfigError, match="model.num_classes is 5 but .* has 2 classes"):
            load_config(DEMO, order)


def test_data_key_in_a_yaml_file_is_relative_to_that_file(tmp_path: Path, monkeypatch):
    write_ultralytics(tmp_path / "project" / "ds")
    config = tmp_path / "project" / "mine.yaml"
    config.write_text("_base_: retinanet/demo\ndata: ds/data.yaml\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(config)
    assert cfg.data.train.img_dir == str(tmp_path / "project" / "ds" / "images" / "train")
    assert cfg.model.num_classes == 2 and cfg.data.train_transforms  # base's transforms kept


def test_txt_image_list_and_missing_path_are_one_line_errors(tmp_path: Path):
    data_yaml = write_ultralytics(tmp_path / "ds")
    (tmp_path / "ds" / "train.txt").write_text("images/train/train0.png\n")
    data_yaml.write_text("train: train.txt\nval: images/val\nnames: [cat, dog]\n")
    with pytest.raises(ConfigError, match=r"train\.txt is a file; a folder of images"):
        load_config(DEMO, [f"data={data_yaml}"])
    with pytest.raises(ConfigError, match=r"nowhere: no such dataset file or folder"):
        load_config(DEMO, [f"data={tmp_path / 'nowhere'}"])


def _coco_split(folder: Path, categories: list[dict]) -> None:
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / "a.png")
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": categories[0]["id"], "bbox": [2, 2, 9, 9]}
        ],
        "categories": categories,
    }
    (folder / "_annotations.coco.json").write_text(json.dumps(doc))


def test_coco_folder_with_train_and_valid_splits(tmp_path: Path):
    categories = [{"id": 4, "name": "dog"}, {"id": 2, "name": "cat"}]
    _coco_split(tmp_path / "ds" / "train", categories)
    _coco_split(tmp_path / "ds" / "valid", categories)
    cfg = load_config(DEMO, [f"data={tmp_path / 'ds'}"])
    assert cfg.data.train.type == "coco" and cfg.model.num_classes == 2
    assert cfg.data.train.classes == cfg.data.val.classes == ["cat", "dog"]  # by id
    assert build_dataset(cfg.data.val)[0]["labels"].tolist() == [1]  # dog


def test_coco_annotations_layout_and_an_unreadable_folder(tmp_path: Path):
    root = tmp_path / "coco"
    for split in ("train2017", "val2017"):
        _coco_split(root / split, [{"id": 1, "name": "person"}])
        (root / "annotations").mkdir(exist_ok=True)
        shutil.move(root / split / "_annotations.coco.json", root / "annotations")
        (root / "annotations" / "_annotations.coco.json").rename(
            root / "annotations" / f"instances_{split}.json"
        )
    cfg = load_config(DEMO, [f"data={root}"])
    assert cfg.data.val.img_dir == str(root / "val2017") and cfg.model.num_classes == 1
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="plain: not a dataset folder tunedet can read"):
        load_config(DEMO, [f"data={tmp_path / 'plain'}"])


def test_yolo_labels_follow_the_last_images_component(tmp_path: Path):
    from tunedet.data.yolo import default_label_dir

    images = tmp_path / "images" / "set" / "images" / "train"
    labels = tmp_path / "images" / "set" / "labels" / "train"
    images.mkdir(parents=True)
    assert default_label_dir(images) == images  # no labels folder: beside the images
    labels.mkdir(parents=True)
    assert default_label_dir(images) == labels
    assert default_label_dir(images.parent) == labels.parent  # ds/images -> ds/labels


def test_a_home_folder_that_does_not_exist_is_a_missing_path(tmp_path: Path):
    with pytest.raises(ConfigError, match="~nosuchuser/ds: no such dataset file or folder"):
        load_config(DEMO, ["data=~nosuchuser/ds"])


def test_yolo_folder_with_classes_txt_and_no_yaml(tmp_path: Path):
    data_yaml = write_ultralytics(tmp_path / "ds")
    data_yaml.unlink()
    with pytest.raises(ConfigError, match="not a dataset folder"):
        load_config(DEMO, [f"data={tmp_path / 'ds'}"])
    (tmp_path / "ds" / "classes.txt").write_text("cat\ndog\n")
    cfg = load_config(DEMO, [f"data={tmp_path / 'ds'}"])
    assert cfg.model.num_classes == 2 and cfg.data.val.classes == ["cat", "dog"]
    assert build_dataset(cfg.data.val)[1]["labels"].tolist() == [1]
