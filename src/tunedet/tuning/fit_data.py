"""``tunedet fit``'s data: DATA as dataset config sections, and a held-out split.

DATA may be a COCO JSON file (images in a sibling ``images/`` folder, else next to it),
a folder of Pascal VOC XML files (flat or devkit), an ultralytics ``data.yaml`` (``path``,
``train``, ``val``, ``names``; YOLO txt labels), or a folder holding ``data.yaml`` or
``annotations.json``. With no validation split (none in ``data.yaml`` and no ``--val``),
a seeded ``HOLDOUT`` share of the images is held out (at least one, at most
``HOLDOUT_MAX``); both parts are written as COCO JSON files in ``OUT/data`` with the
images where they are, so the recipe that fit writes reads the same split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HOLDOUT = 0.2
HOLDOUT_MAX = 500


def dataset_spec(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The ``data.train`` section for DATA, and ``data.val`` when DATA names a validation
    split (``data.yaml``'s ``val``), else None."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file or folder")
    if path.is_dir():
        for name in ("data.yaml", "data.yml"):
            if (path / name).is_file():
                return _ultralytics_spec(path / name)
        if (path / "annotations.json").is_file():
            return _coco_spec(path / "annotations.json"), None
        if (path / "Annotations").is_dir() or any(path.glob("*.xml")):
            return {"type": "voc", "root": str(path)}, None
        raise ValueError(
            f"{path}: not a dataset folder tunedet fit reads (VOC *.xml files, a data.yaml "
            "or an annotations.json); for YOLO txt labels give the data.yaml naming the classes"
        )
    if path.suffix.lower() == ".json":
        return _coco_spec(path), None
    if path.suffix.lower() in (".yaml", ".yml"):
        return _ultralytics_spec(path)
    raise ValueError(f"{path}: give a COCO .json file, a data.yaml or a VOC folder")


def _coco_spec(ann_file: Path) -> dict[str, Any]:
    images = ann_file.parent / "images"
    img_dir = images if images.is_dir() else ann_file.parent
    return {"type": "coco", "ann_file": str(ann_file), "img_dir": str(img_dir)}


def _ultralytics_spec(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    with path.open() as handle:
        raw = yaml.safe_load(handle)
    if not isinstance(raw, dict) or "train" not in raw or "names" not in raw:
        raise ValueError(f"{path}: a data.yaml needs 'train' and 'names' keys")
    names = raw["names"]
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    root = Path(raw.get("path") or ".")
    root = root if root.is_absolute() else path.parent / root

    def images(key: str) -> dict[str, Any] | None:
        value = raw.get(key)
        if not value:
            return None
        if not isinstance(value, str):
            raise ValueError(f"{path}: '{key}' must be one folder of images, got {value!r}")
        folder = Path(value) if Path(value).is_absolute() else root / value
        return {"type": "yolo", "img_dir": str(folder), "classes": [str(n) for n in names]}

    return images("train"), images("val")


def holdout_split(
    num_images: int, seed: int, share: float = HOLDOUT, most: int = HOLDOUT_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices), a seeded permutation: ``round(share · n)`` held
    out, at least 1 and at most ``most``; both sorted."""
    if num_images < 2:
        raise ValueError(f"need at least 2 images to hold one out, the dataset has {num_images}")
    count = min(max(1, round(share * num_images)), most, num_images - 1)
    order = np.random.default_rng(seed).permutation(num_images)
    return np.sort(order[count:]), np.sort(order[:count])


def write_split(dataset: Any, indices: np.ndarray, out: Path) -> dict[str, Any]:
    """Write the images ``indices`` of a file-backed dataset (its ``records``) as a COCO
    JSON file ``out`` (file names relative to the images' common folder); returns the
    ``coco`` dataset section that reads it."""
    records = [dataset.records[i] for i in indices]
    gt = dataset.coco_ground_truth()
    keep = {r.image_id for r in records}
    paths = [str(Path(r.path).resolve()) for r in records]
    root = os.path.commonpath([str(Path(p).parent) for p in paths])
    images = [
        {
            "id": r.image_id,
            "file_name": os.path.relpath(p, root),
            "width": r.width,
            "height": r.height,
        }
        for r, p in zip(records, paths, strict=True)
    ]
    annotations = [a for a in gt["annotations"] if a["image_id"] in keep]
    categories = [{"id": i, "name": name} for i, name in enumerate(dataset.classes)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return {"type": "coco", "ann_file": str(out), "img_dir": root, "classes": list(dataset.classes)}
