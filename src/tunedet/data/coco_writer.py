"""Write a dataset to disk as PNG images + a COCO ``annotations.json``.

Used by ``tunedet data synth OUT`` to look at the synthetic data, and to
hand any dataset (tiles included) to other tools. `CocoDataset` reads the
result back with the same boxes and labels::

    CocoDataset(ann_file=f"{out}/annotations.json", img_dir=f"{out}/images")
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from PIL import Image


def _png_name(file: str, image_id: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(file).stem if "#" not in file else file)
    return f"{stem.replace('.', '_') or image_id}.png"


def write_coco(dataset, out_dir: str | Path, max_images: int | None = None) -> Path:
    """Write the first ``max_images`` items (all if None); return the annotation file's path.

    Layout: ``out_dir/images/<name>.png`` and ``out_dir/annotations.json``
    holding ``dataset.coco_ground_truth()`` for those items (``category_id``
    == label, crowd/ignore/difficult flags kept). Images are the dataset's
    items before any transform.
    """
    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    gt = dataset.coco_ground_truth()
    anns_by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in gt["annotations"]:
        anns_by_image[ann["image_id"]].append(ann)
    info_by_id = {img["id"]: img for img in gt["images"]}

    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    images, annotations, used = [], [], set()
    for index in range(count):
        sample = dataset[index]
        image_id = sample["image_id"]
        name = _png_name(sample["file"], image_id)
        if name in used:
            name = f"{Path(name).stem}_{image_id}.png"
        used.add(name)
        Image.fromarray(sample["image"]).save(image_dir / name)
        height, width = sample["image"].shape[:2]
        entry = dict(info_by_id.get(image_id, {}), id=image_id, file_name=name)
        images.append(dict(entry, width=width, height=height))
        annotations.extend(anns_by_image.get(image_id, []))

    for i, ann in enumerate(annotations, start=1):
        ann["id"] = i
    ann_file = out / "annotations.json"
    doc = {
        "info": {"description": "written by tunedet.data.write_coco"},
        "images": images,
        "annotations": annotations,
        "categories": gt["categories"],
    }
    tmp = ann_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    tmp.replace(ann_file)
    return ann_file
