"""Writers of tiny datasets (exposed as fixtures: `make_dataset`, `datafiles`) in each format, for the reader tests.

An image spec is ``(stem, width, height, objects)`` with objects
``(class_name, (x0, y0, x1, y1))`` in pixels; class names are from
``CLASSES`` (or anything else to make an unknown class).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

CLASSES = ["cat", "dog"]
COCO_CATEGORY_IDS = {"cat": 3, "dog": 7}  # non-contiguous ids on purpose


def write_png(path: Path, width: int, height: int, seed: int = 0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def truncate_file(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def voc_xml(filename: str, width: int, height: int, objects, difficult=()) -> str:
    parts = [
        "<annotation>",
        f"  <filename>{filename}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for k, (name, (x0, y0, x1, y1)) in enumerate(objects):
        parts += [
            "  <object>",
            f"    <name>{name}</name>",
            f"    <difficult>{int(k in difficult)}</difficult>",
            f"    <bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def write_voc(root: Path, images) -> None:
    for stem, width, height, objects in images:
        write_png(root / f"{stem}.png", width, height)
        (root / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", width, height, objects))


def coco_doc(images) -> dict:
    doc = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for n, i in COCO_CATEGORY_IDS.items()],
    }
    for image_id, (stem, width, height, objects) in enumerate(images, start=1):
        doc["images"].append(
            {"id": image_id, "file_name": f"{stem}.png", "width": width, "height": height}
        )
        for name, (x0, y0, x1, y1) in objects:
            doc["annotations"].append(
                {
                    "id": len(doc["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": COCO_CATEGORY_IDS.get(name, 99),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "iscrowd": 0,
                }
            )
    return doc


def write_coco_files(root: Path, images) -> None:
    for stem, width, height, _ in images:
        write_png(root / f"{stem}.png", width, height)
    (root / "annotations.json").write_text(json.dumps(coco_doc(images), indent=1))


def write_yolo(root: Path, images) -> None:
    for stem, width, height, objects in images:
        write_png(root / f"{stem}.png", width, height)
        lines = []
        for name, (x0, y0, x1, y1) in objects:
            label = CLASSES.index(name) if name in CLASSES else 5
            cx, cy = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
            lines.append(f"{label} {cx} {cy} {(x1 - x0) / width} {(y1 - y0) / height}")
        (root / f"{stem}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def datafiles() -> SimpleNamespace:
    """The writer helpers above, for tests (conftest is not importable as a module)."""
    return SimpleNamespace(
        write_png=write_png,
        truncate_file=truncate_file,
        voc_xml=voc_xml,
        coco_doc=coco_doc,
        classes=CLASSES,
    )


@pytest.fixture
def make_dataset(tmp_path) -> Callable:
    """``make_dataset(fmt, images, strict=False, **kw)`` writes and reads a dataset."""
    from tunedet.data import CocoDataset, VOCDataset, YOLODataset

    def make(fmt: str, images, strict: bool = False, damage=None, **kwargs):
        root = tmp_path / fmt
        root.mkdir(exist_ok=True)
        {"voc": write_voc, "coco": write_coco_files, "yolo": write_yolo}[fmt](root, images)
        if damage is not None:
            damage(root)
        if fmt == "voc":
            return VOCDataset(
                str(root), classes=kwargs.pop("classes", CLASSES), strict=strict, **kwargs
            )
        if fmt == "coco":
            return CocoDataset(str(root / "annotations.json"), str(root), strict=strict, **kwargs)
        return YOLODataset(str(root), classes=CLASSES, strict=strict, **kwargs)

    return make
