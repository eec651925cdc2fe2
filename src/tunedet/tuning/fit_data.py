"""``tunedet fit``'s data: DATA as dataset config sections, and a held-out split.

DATA is anything ``data=PATH`` reads (an ultralytics ``data.yaml``, a dataset folder:
data/dataset_files.py), a COCO JSON file (images in a sibling ``images/`` folder, else
next to it), a folder with an ``annotations.json``, or a flat folder of Pascal VOC XML
files. With no validation split (none in ``data.yaml`` and no ``--val``),
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

HOLDOUT = 0.2
HOLDOUT_MAX = 500


def dataset_spec(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The ``data.train`` section for DATA, and ``data.val`` when DATA names a validation
    split, else None. What ``data=PATH`` reads (an ultralytics YAML, a folder with
    ``data.yaml``, ``train/`` + ``val/`` or the COCO layout: data/dataset_files.py) comes
    first; then a COCO JSON file, a folder with ``annotations.json``, a flat VOC folder."""
    from tunedet.data.dataset_files import DatasetFileError, dataset_splits

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file or folder")
    if path.is_file() and path.suffix.lower() == ".json":
        return _coco_spec(path), None
    try:
        splits = dataset_splits(path)
    except DatasetFileError as error:
        if path.is_dir() and (path / "annotations.json").is_file():
            return _coco_spec(path / "annotations.json"), None
        if path.is_dir() and ((path / "Annotations").is_dir() or any(path.glob("*.xml"))):
            return {"type": "voc", "root": str(path)}, None
        raise ValueError(
            f"{error}; tunedet fit also reads a COCO .json file, a folder with an "
            "annotations.json, or a folder of VOC *.xml files"
        ) from None
    return splits.train, splits.val


def _coco_spec(ann_file: Path) -> dict[str, Any]:
    images = ann_file.parent / "images"
    img_dir = images if images.is_dir() else ann_file.parent
    return {"type": "coco", "ann_file": str(ann_file), "img_dir": str(img_dir)}


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
