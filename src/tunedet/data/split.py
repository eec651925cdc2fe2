"""``tunedet data split``: a seeded train/val split of a COCO file, a VOC folder or a YOLO
folder, written as a new dataset folder that ``data=OUT`` reads.

Images are split, never annotations: an image and all its boxes go to the same split.
``val`` images are ``round(val_fraction · n)`` (at least 1, at most n − 1) drawn by a
permutation from ``numpy.random.default_rng(seed)`` over the images sorted by name, so
the same seed gives the same split on any machine. Images are linked (symlinks), or
copied with ``copy=True``; annotations are written. The output folder must not exist
or be empty (nothing is overwritten):

- COCO ``ann.json`` (images in ``img_dir``, default: the file's folder):
  ``OUT/train/_annotations.coco.json`` + images, ``OUT/val/...``;
- VOC folder (``*.xml`` beside the images, or ``Annotations/`` + ``JPEGImages/``):
  ``OUT/train/*.xml`` + images, ``OUT/val/...``;
- YOLO folder (images with ``<stem>.txt`` labels beside them or in the ``labels``
  folder of the ultralytics layout) or an ultralytics data YAML (its ``train``
  folder): ``OUT/images/{train,val}``, ``OUT/labels/{train,val}``, ``OUT/data.yaml``
  (class names from the YAML, or ``names``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from tunedet.data.annotated_images import IMAGE_EXTENSIONS, find_image_by_stem
from tunedet.data.bad_input import DataError


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` indices of ``count`` items, each sorted (see the module docstring)."""
    if count < 2:
        raise DataError(f"{count} image(s): a split needs at least 2")
    if not 0 < val_fraction < 1:
        raise DataError(f"val fraction {val_fraction} must be between 0 and 1")
    num_val = min(count - 1, max(1, round(val_fraction * count)))
    order = np.random.default_rng(seed).permutation(count)
    return sorted(order[num_val:].tolist()), sorted(order[:num_val].tolist())


def _place(source: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copy2(source, target)
    else:
        target.symlink_to(source.resolve())


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder (nothing is overwritten)")


def split_coco(
    ann_file: Path, out: Path, val_fraction: float, seed: int, img_dir: Path | None, copy: bool
) -> dict[str, int]:
    from tunedet.data.coco import load_coco_json

    data = load_coco_json(ann_file)
    img_dir = img_dir or ann_file.parent
    images = sorted(data["images"], key=lambda im: str(im.get("file_name")))
    splits = dict(
        zip(("train", "val"), split_indices(len(images), val_fraction, seed), strict=True)
    )
    counts = {}
    for split, indices in splits.items():
        chosen = [images[i] for i in indices]
        ids = {im.get("id") for im in chosen}
        annotations = [
            a
            for a in data.get("annotations") or []
            if isinstance(a, dict) and a.get("image_id") in ids
        ]
        for im in chosen:
            source = img_dir / str(im["file_name"])
            if source.is_file():
                _place(source, out / split / str(im["file_name"]), copy)
        doc = {**data, "images": chosen, "annotations": annotations}
        (out / split).mkdir(parents=True, exist_ok=True)
        (out / split / "_annotations.coco.json").write_text(json.dumps(doc))
        counts[split] = len(chosen)
    return counts


def split_voc(root: Path, out: Path, val_fraction: float, seed: int, copy: bool) -> dict[str, int]:
    devkit = (root / "Annotations").is_dir()
    xml_dir = root / "Annotations" if devkit else root
    img_dir = root / "JPEGImages" if devkit and (root / "JPEGImages").is_dir() else xml_dir
    xmls = sorted(xml_dir.glob("*.xml"))
    counts = {}
    parts = split_indices(len(xmls), val_fraction, seed)
    for split, indices in zip(("train", "val"), parts, strict=True):
        for i in indices:
            _place(xmls[i], out / split / xmls[i].name, copy=True)
            image = find_image_by_stem(img_dir, [xmls[i].stem])
            if image is not None:
                _place(image, out / split / image.name, copy)
        counts[split] = len(indices)
    return counts


def split_yolo(
    source: Path, out: Path, val_fraction: float, seed: int, names: list[str] | None, copy: bool
) -> dict[str, int]:
    from tunedet.data.dataset_files import read_ultralytics_yaml
    from tunedet.data.yolo import default_label_dir

    if source.is_file():
        splits = read_ultralytics_yaml(source)
        names, img_dir = splits.classes, Path(splits.train["img_dir"])
    else:
        img_dir = source
    if not names:
        raise DataError(f"{source}: name the classes (names: a data.yaml, or --names a,b,...)")
    label_dir = default_label_dir(img_dir)
    images = sorted(
        p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    counts = {}
    parts = split_indices(len(images), val_fraction, seed)
    for split, indices in zip(("train", "val"), parts, strict=True):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in indices:
            _place(images[i], out / "images" / split / images[i].name, copy)
            label = label_dir / f"{images[i].stem}.txt"
            if label.is_file():
                _place(label, out / "labels" / split / label.name, copy=True)
        counts[split] = len(indices)
    lines = ["path: .", "train: images/train", "val: images/val", "names:"]
    lines += [f"  {i}: {json.dumps(name)}" for i, name in enumerate(names)]
    (out / "data.yaml").write_text("\n".join(lines) + "\n")
    return counts


def split_dataset(
    source: str | Path,
    out: str | Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    img_dir: str | Path | None = None,
    names: list[str] | None = None,
    copy: bool = False,
) -> dict[str, int]:
    """Split ``source`` into ``out`` (module docstring); returns the image count per split."""
    source, out = Path(source), Path(out)
    _check_out(out)
    if source.is_file() and source.suffix.lower() == ".json":
        return split_coco(source, out, val_fraction, seed, Path(img_dir) if img_dir else None, copy)
    if source.is_file() and source.suffix.lower() in (".yaml", ".yml"):
        return split_yolo(source, out, val_fraction, seed, names, copy)
    if not source.is_dir():
        raise DataError(f"{source}: no such COCO file, VOC folder or YOLO folder")
    if (source / "Annotations").is_dir() or any(source.glob("*.xml")):
        return split_voc(source, out, val_fraction, seed, copy)
    for name in ("data.yaml", "dataset.yaml"):
        if (source / name).is_file():
            return split_yolo(source / name, out, val_fraction, seed, names, copy)
    from tunedet.data.yolo import default_label_dir

    images = source / "images" if (source / "images").is_dir() else source
    if any(default_label_dir(images).glob("*.txt")):
        return split_yolo(images, out, val_fraction, seed, names, copy)
    raise DataError(
        f"{source}: not a COCO file, a VOC folder (*.xml) or a YOLO folder (images with .txt labels)"
    )
