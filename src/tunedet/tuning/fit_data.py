"""``tunedet fit``'s data: DATA as dataset config sections, and a held-out split.

DATA is anything ``data=PATH`` reads (an ultralytics ``data.yaml``, a dataset folder:
data/dataset_files.py), a COCO JSON file (images in a sibling ``images/`` folder, else
next to it), a folder with an ``annotations.json``, or a flat folder of Pascal VOC XML
files. With no validation split (none in ``data.yaml`` and no ``--val``),
a seeded ``HOLDOUT`` share of the images is held out (at least one, at most
``HOLDOUT_MAX``); both parts are written as COCO JSON files in ``OUT/data`` with the
images where they are, so the recipe that fit writes reads the same split. Images that
share pixels (overlapping tiles, copies: ``tuning/shared_pixels.py``) are held out as a
group of neighbours, and what training images still share with the held-out ones is
masked out (the masked copies in ``OUT/data/masked``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tunedet.tuning.shared_pixels import SharedRegion

HOLDOUT = 0.2
HOLDOUT_MAX = 500
SHARED_PIXELS_MAX_MPX = 40  # above this many megapixels of images the check is skipped, and said
MASKED_BOX_SHARE = 0.5  # a training box this much under masked pixels is dropped
MASKED_IMAGE_SHARE = 0.9  # a training image this much masked is dropped whole


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
    num_images: int,
    seed: int,
    share: float = HOLDOUT,
    most: int = HOLDOUT_MAX,
    shared: dict[int, list[SharedRegion]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): ``round(share · n)`` held out, at least 1 and at
    most ``most``; both sorted. Images in a seeded permutation; with ``shared``
    (``shared_pixels.shared_regions``: overlapping tiles) the held-out group is grown
    from the first image by adding the image that shares the most pixels with the group,
    then the next in the permutation, so that few training pixels are copies of it."""
    if num_images < 2:
        raise ValueError(f"need at least 2 images to hold one out, the dataset has {num_images}")
    count = min(max(1, round(share * num_images)), most, num_images - 1)
    order = np.random.default_rng(seed).permutation(num_images)
    if not shared:
        return np.sort(order[count:]), np.sort(order[:count])
    rank = {int(image): r for r, image in enumerate(order)}
    group: list[int] = []
    with_group: dict[int, int] = {}  # image -> pixels it shares with the group
    while len(group) < count:
        if with_group:
            best = max(with_group, key=lambda i: (with_group[i], -rank[i]))
        else:
            best = next(int(i) for i in order if int(i) not in group)
        group.append(best)
        with_group.pop(best, None)
        for region in shared.get(best, []):  # the images that ``best`` covers parts of
            if region.other not in group:
                with_group[region.other] = with_group.get(region.other, 0) + region.area
    held = np.array(sorted(group))
    return np.setdiff1d(np.arange(num_images), held), held


def find_shared_pixels(dataset: Any) -> tuple[dict[int, list[SharedRegion]], str]:
    """(``shared_regions`` of the dataset's images, a sentence on it); not checked above
    ``SHARED_PIXELS_MAX_MPX`` of images (its cost grows with the pixels)."""
    from tunedet.data.annotated_images import load_rgb
    from tunedet.tuning.shared_pixels import shared_regions

    records = dataset.records
    pixels = sum(r.width * r.height for r in records)
    if pixels > SHARED_PIXELS_MAX_MPX * 1e6:
        return {}, f"shared pixels between images not checked ({pixels / 1e6:.0f} Mpx)"
    shared = shared_regions([load_rgb(Path(r.path), r.file) for r in records])
    if not shared:
        return {}, "no two images share pixels"
    return shared, (
        f"{len(shared)} images share pixels with others (overlapping tiles or copies): "
        "the held-out images are a group of neighbours"
    )


@dataclass
class MaskedImages:
    """Training images with pixels of held-out ones masked out: record index -> the
    masked copy's path; the annotations dropped with the masked pixels; the indices
    dropped whole (near-copies of held-out images)."""

    paths: dict[int, Path] = field(default_factory=dict)
    dropped_annotations: set[int] = field(default_factory=set)
    dropped_images: set[int] = field(default_factory=set)
    note: str = ""


def mask_shared_pixels(
    dataset: Any,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    shared: dict[int, list[SharedRegion]],
    out: Path,
) -> MaskedImages:
    """Write each training image that shares pixels with held-out ones to ``out`` with
    those regions filled with its mean colour, and drop its boxes at least
    ``MASKED_BOX_SHARE`` covered; an image covered to ``MASKED_IMAGE_SHARE`` is dropped
    whole."""
    from PIL import Image

    from tunedet.data.annotated_images import load_rgb
    from tunedet.tuning.shared_pixels import box_coverage, mask_regions

    held = {int(i) for i in val_idx}
    result = MaskedImages()
    touched = {int(i): [r for r in shared.get(int(i), []) if r.other in held] for i in train_idx}
    touched = {i: regions for i, regions in touched.items() if regions}
    if not touched:
        return result
    by_image: dict[int, list[dict]] = {}
    for ann in dataset.coco_ground_truth()["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out.mkdir(parents=True, exist_ok=True)
    masked_pixels = 0
    for index, regions in sorted(touched.items()):
        record = dataset.records[index]
        image, mask = mask_regions(load_rgb(Path(record.path), record.file), regions)
        masked_pixels += int(mask.sum())
        if mask.mean() >= MASKED_IMAGE_SHARE:
            result.dropped_images.add(index)
            continue
        anns = by_image.get(record.image_id, [])
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        covered = box_coverage(boxes, mask) >= MASKED_BOX_SHARE
        result.dropped_annotations.update(a["id"] for a, c in zip(anns, covered, strict=True) if c)
        path = out / f"{index:06d}_{Path(record.file).stem}.png"
        Image.fromarray(image).save(path)
        result.paths[index] = path
    train_pixels = sum(
        dataset.records[int(i)].width * dataset.records[int(i)].height for i in train_idx
    )
    result.note = (
        f"{len(touched)} training image(s) share pixels with held-out ones: "
        f"{masked_pixels / max(train_pixels, 1):.0%} of the training pixels masked out, "
        f"{len(result.dropped_annotations)} box(es) and {len(result.dropped_images)} whole "
        f"image(s) dropped ({out})"
    )
    return result


def write_split(
    dataset: Any, indices: np.ndarray, out: Path, masked: MaskedImages | None = None
) -> dict[str, Any]:
    """Write the images ``indices`` of a file-backed dataset (its ``records``) as a COCO
    JSON file ``out`` (file names relative to the images' common folder), with
    ``masked``'s copies and drops applied; returns the ``coco`` dataset section that
    reads it."""
    masked = masked or MaskedImages()
    kept = [int(i) for i in indices if int(i) not in masked.dropped_images]
    records = [dataset.records[i] for i in kept]
    gt = dataset.coco_ground_truth()
    keep = {r.image_id for r in records}
    paths = [str(Path(masked.paths.get(i, dataset.records[i].path)).resolve()) for i in kept]
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
    annotations = [
        a
        for a in gt["annotations"]
        if a["image_id"] in keep and a["id"] not in masked.dropped_annotations
    ]
    categories = [{"id": i, "name": name} for i, name in enumerate(dataset.classes)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return {"type": "coco", "ann_file": str(out), "img_dir": root, "classes": list(dataset.classes)}
