"""``data=PATH``: the training and validation datasets of an ultralytics dataset YAML or
of a dataset folder.

An ultralytics dataset YAML (``coco8.yaml``)::

    path: ../datasets/coco8   # dataset root; relative: to this YAML's folder first, then
                              # to the current directory; absent: this YAML's folder
    train: images/train       # image folders, relative to ``path``
    val: images/val
    test:                     # optional; accepted, not used (evaluation uses val)
    names: {0: person, 1: bicycle}   # or a list; ``nc`` alone gives names 0..nc-1

gives YOLO datasets whose labels are found by the ultralytics rule (the last
``images`` path component replaced by ``labels``: ``images/train/a.jpg`` ->
``labels/train/a.txt``; data/yolo.py). A ``train:`` that ultralytics would read as
a ``.txt`` list of images, or a list of several folders, is refused in one line.

A folder is read when its layout says which format it holds:

- a ``data.yaml`` (or ``dataset.yaml``) inside: that file;
- ``train/`` and ``val/`` (or ``valid/``) folders, each with one COCO ``*.json``
  and its images (the Roboflow export) or with VOC ``*.xml`` files (or a devkit
  ``Annotations/``);
- the ultralytics layout without a YAML: ``images/train`` (and ``images/val``) with
  their ``labels/`` and the class names one per line in ``classes.txt`` (LabelImg)
  or ``obj.names`` (darknet);
- the COCO layout: ``annotations/instances_train*.json`` and
  ``annotations/instances_val*.json`` with the images in the folders of the same
  suffix (``train2017/``, ``val2017/``).

The class names come from the YAML's ``names``, the training COCO file's
categories or the training VOC files' object names, and are written into both
splits so that the labels of both mean the same classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunedet.config.loader import user_path

DATA_YAML_NAMES = ("data.yaml", "dataset.yaml")
NAMES_FILES = ("classes.txt", "obj.names")


class DatasetFileError(ValueError):
    """A ``data=`` path that is not a dataset this module can read; the message names it."""


@dataclass
class DatasetSplits:
    """``train``/``val``: dataset specs (``{"type": ..., ...}``) for ``data.train``/``data.val``."""

    train: dict[str, Any]
    val: dict[str, Any] | None
    classes: list[str]


def dataset_splits(source: str | Path) -> DatasetSplits:
    """The datasets of an ultralytics YAML file or a dataset folder (module docstring)."""
    path = user_path(str(source))
    if path.is_file():
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise DatasetFileError(f"{path}: expected an ultralytics dataset .yaml or a folder")
        return read_ultralytics_yaml(path)
    if path.is_dir():
        return read_dataset_folder(path)
    raise DatasetFileError(f"{path}: no such dataset file or folder")


def _class_names(data: dict[str, Any], where: Path) -> list[str]:
    names, count = data.get("names"), data.get("nc")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise DatasetFileError(f"{where}: nc must be a positive integer, got {count!r}")
    if names is None:
        if count is None:
            raise DatasetFileError(f"{where}: no 'names' (nor 'nc'): name the classes")
        return [str(i) for i in range(count)]
    if isinstance(names, dict):
        keys = sorted(names, key=lambda k: (not isinstance(k, int), str(k)))
        if keys != list(range(len(names))):
            raise DatasetFileError(
                f"{where}: names must be numbered 0..{len(names) - 1}, got keys {keys[:10]}"
            )
        names = [names[i] for i in keys]
    if not isinstance(names, list) or not names:
        raise DatasetFileError(f"{where}: names must be a list or a {{0: name}} mapping")
    names = [str(n) for n in names]
    if count is not None and count != len(names):
        raise DatasetFileError(f"{where}: nc is {count} but names lists {len(names)} classes")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DatasetFileError(f"{where}: class names repeat: {', '.join(twice[:5])}")
    return names


def _dataset_root(data: dict[str, Any], where: Path) -> Path:
    value = data.get("path")
    if value in (None, ""):
        return where.parent.resolve()
    if not isinstance(value, str):
        raise DatasetFileError(f"{where}: path must be a folder name, got {value!r}")
    root = user_path(value)
    if root.is_absolute():
        return root
    beside = (where.parent / root).resolve()
    if not beside.is_dir() and root.is_dir():
        return root.resolve()
    return beside


def _image_folder(data: dict[str, Any], key: str, root: Path, where: Path) -> Path | None:
    value = data.get(key)
    if value in (None, ""):
        return None
    if isinstance(value, list):
        if len(value) != 1:
            raise DatasetFileError(
                f"{where}: {key} lists {len(value)} folders; one folder per split is supported"
            )
        value = value[0]
    if not isinstance(value, str):
        raise DatasetFileError(f"{where}: {key} must be a folder, got {value!r}")
    folder = root / value
    if not folder.exists() and value.startswith("../"):
        folder = root / value[3:]  # ultralytics reads "../x" as "x" when that is the one there
    folder = folder.resolve()
    if folder.is_file():
        raise DatasetFileError(
            f"{where}: {key}: {folder} is a file; a folder of images is supported "
            "(not a .txt list of images)"
        )
    if not folder.is_dir():
        raise DatasetFileError(f"{where}: {key}: no folder {folder}")
    return folder


def read_ultralytics_yaml(path: Path) -> DatasetSplits:
    """The YOLO datasets of an ultralytics dataset YAML."""
    from tunedet.config.loader import read_yaml

    data = read_yaml(path)
    classes = _class_names(data, path)
    root = _dataset_root(data, path)
    train = _image_folder(data, "train", root, path)
    if train is None:
        raise DatasetFileError(f"{path}: no 'train' folder")
    val = _image_folder(data, "val", root, path)

    def spec(folder: Path) -> dict[str, Any]:
        return {"type": "yolo", "img_dir": str(folder), "classes": list(classes)}

    return DatasetSplits(spec(train), spec(val) if val is not None else None, classes)


def _split_folder(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_dir()), None)


def _folder_spec(folder: Path) -> dict[str, Any] | None:
    """A COCO (one ``*.json``) or VOC (``*.xml`` / ``Annotations/``) spec of one split folder."""
    jsons = sorted(folder.glob("*.json"))
    if len(jsons) == 1:
        return {"type": "coco", "ann_file": str(jsons[0]), "img_dir": str(folder)}
    if (folder / "Annotations").is_dir() or any(folder.glob("*.xml")):
        return {"type": "voc", "root": str(folder)}
    return None


def _with_classes(train: dict, val: dict | None) -> DatasetSplits:
    from tunedet.data.coco import coco_class_names
    from tunedet.data.voc import voc_class_names

    if train["type"] == "coco":
        classes = coco_class_names(train["ann_file"])
    else:
        classes = voc_class_names(train["root"])
    if not classes:
        raise DatasetFileError(f"{train.get('ann_file', train.get('root'))}: names no classes")
    train = {**train, "classes": classes}
    val = {**val, "classes": classes} if val is not None else None
    return DatasetSplits(train, val, classes)


def read_dataset_folder(folder: Path) -> DatasetSplits:
    """The datasets of a folder (module docstring), or `DatasetFileError` saying what
    was looked for."""
    for name in DATA_YAML_NAMES:
        if (folder / name).is_file():
            return read_ultralytics_yaml(folder / name)
    train_dir = _split_folder(folder, ("train",))
    val_dir = _split_folder(folder, ("val", "valid", "validation"))
    if train_dir is not None:
        train = _folder_spec(train_dir)
        val = _folder_spec(val_dir) if val_dir is not None else None
        if train is not None and (val is None or val["type"] == train["type"]):
            return _with_classes(train, val)
    names_file = next((folder / n for n in NAMES_FILES if (folder / n).is_file()), None)
    yolo_train = folder / "images" / "train"
    if names_file is not None and yolo_train.is_dir():
        classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if not classes:
            raise DatasetFileError(f"{names_file}: no class names (one per line)")
        yolo_val = _split_folder(folder / "images", ("val", "valid", "validation"))
        train = {"type": "yolo", "img_dir": str(yolo_train.resolve()), "classes": classes}
        val = {**train, "img_dir": str(yolo_val.resolve())} if yolo_val is not None else None
        return DatasetSplits(train, val, classes)
    annotations = folder / "annotations"
    train_files = sorted(annotations.glob("instances_train*.json"))
    if len(train_files) == 1:
        val_files = sorted(annotations.glob("instances_val*.json"))

        def coco_spec(ann_file: Path) -> dict[str, Any]:
            images = folder / ann_file.stem.removeprefix("instances_")
            if not images.is_dir():
                raise DatasetFileError(f"{ann_file}: no image folder {images}")
            return {"type": "coco", "ann_file": str(ann_file), "img_dir": str(images)}

        val = coco_spec(val_files[0]) if len(val_files) == 1 else None
        return _with_classes(coco_spec(train_files[0]), val)
    raise DatasetFileError(
        f"{folder}: not a dataset folder tunedet can read: no data.yaml, no train/ + val/ "
        "folders of COCO JSON or VOC XML, no images/train with classes.txt, no "
        "annotations/instances_train*.json (a YOLO folder needs its class names)"
    )
