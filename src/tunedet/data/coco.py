"""COCO JSON reader.

``bbox [x, y, w, h]`` becomes xyxy. Category ids map to 0-based contiguous
labels in sorted id order (or to the order of ``classes`` when given, other
categories being dropped and counted). Crowd (``iscrowd: 1``) and
``ignore: 1`` annotations are not training targets; they stay in
`coco_ground_truth()` with their flag. Sample ``image_id`` is the file's own
image id (tiles are renumbered 1..num_tiles).

With ``masks: true`` each annotation's ``segmentation`` (polygons, uncompressed or
compressed RLE) is read into a compressed RLE (data/masks.py); a missing or
malformed one skips the annotation like any other bad annotation (or raises in
strict mode, naming the file and annotation id). Samples then carry ``"masks"``
and the COCO ground truth ``segmentation`` in original pixels.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from tunedet.config.registry import register
from tunedet.data.annotated_images import (
    AnnotatedImageDataset,
    ImageCheck,
    RecordBuilder,
    checked_image_size,
    repair_box,
    resolve_check,
)
from tunedet.data.bad_input import (
    MALFORMED_ANNOTATION_SKIPPED,
    SIZE_MISMATCH,
    UNKNOWN_CLASS_DROPPED,
    BadInputReport,
    DataError,
)
from tunedet.data.masks import segmentation_to_rle


def load_coco_json(ann_file: str | Path) -> dict:
    """Read a COCO annotation file; `DataError` naming file and line on malformed JSON."""
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as err:
        raise DataError(
            f"{ann_file}: cannot read annotation file ({err.strerror or err})"
        ) from None
    except RecursionError:
        raise DataError(f"{ann_file}: malformed annotation file: nested too deeply") from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"{ann_file}:{err.lineno}: malformed annotation file: {err.msg} (column {err.colno})"
        ) from None
    except UnicodeDecodeError as err:
        raise DataError(
            f"{ann_file}: malformed annotation file: not UTF-8 text ({err.reason})"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{ann_file}: malformed annotation file: no 'images' list at the top level")
    for key in ("categories", "annotations"):
        if data.get(key) is not None and not isinstance(data[key], list):
            raise DataError(
                f"{ann_file}: malformed annotation file: '{key}' is a "
                f"{type(data[key]).__name__}, not a list"
            )
    return data


def _int_id(entry: Any, key: str = "id") -> int:
    value = entry[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or int(value) != value
    ):
        raise ValueError(f"{key} {value!r} is not an integer")
    return int(value)


def coco_categories(data: dict, ann_file: str | Path, report: BadInputReport) -> dict[int, str]:
    """``{category id: name}`` of a loaded COCO file; a malformed entry is counted in
    ``report``, a category id used twice raises `DataError` (its boxes would silently
    take the second name)."""
    categories: dict[int, str] = {}
    for k, cat in enumerate(data.get("categories") or []):
        try:
            cat_id, name = _int_id(cat), str(cat["name"])
        except (KeyError, TypeError, ValueError) as err:
            report.record(MALFORMED_ANNOTATION_SKIPPED, f"{ann_file} (category {k})", repr(err))
            continue
        if cat_id in categories:
            raise DataError(
                f"{ann_file}: category id {cat_id} is used twice "
                f"({categories[cat_id]!r} and {name!r})"
            )
        categories[cat_id] = name
    return categories


def coco_class_names(ann_file: str | Path) -> list[str]:
    """The class names of a COCO file, in label order (sorted by category id)."""
    categories = coco_categories(load_coco_json(ann_file), ann_file, BadInputReport())
    return [categories[i] for i in sorted(categories)]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@register("dataset", "coco")
class CocoDataset(AnnotatedImageDataset):
    """A COCO-format detection set: one JSON annotation file and a folder of images.

    Args:
        ann_file: the COCO JSON file.
        img_dir: folder that ``file_name`` is relative to.
        strict: raise `DataError` on the first bad input instead of repairing.
        classes: category names in label order; None: all categories, sorted by id.
        check_images: image check at construction (see annotated_images.py).
        tile_size: cut images into square tiles of this size; None: whole images.
        tile_overlap: overlap of neighbouring tiles, as a fraction of tile_size.
        min_visible: a tile-cut box is kept if this fraction of it is inside.
        masks: read each annotation's ``segmentation`` into an instance mask.
    """

    def __init__(
        self,
        ann_file: str,
        img_dir: str,
        strict: bool = False,
        classes: list[str] | None = None,
        check_images: ImageCheck = "auto",
        tile_size: Annotated[int, Field(ge=1)] | None = None,
        tile_overlap: Annotated[float, Field(ge=0, lt=1)] = 0.25,
        min_visible: Annotated[float, Field(ge=0, le=1)] = 0.5,
        masks: bool = False,
    ) -> None:
        data = load_coco_json(ann_file)
        report = BadInputReport(strict)
        image_root = Path(img_dir)

        categories = coco_categories(data, ann_file, report)
        if classes is None:
            classes = [categories[i] for i in sorted(categories)]
            label_of_cat = {cat_id: i for i, cat_id in enumerate(sorted(categories))}
        else:
            position = {name: i for i, name in enumerate(classes)}
            label_of_cat = {i: position[n] for i, n in categories.items() if n in position}

        entries = []  # (image id, file name, annotated (w, h) or None)
        seen: set[int] = set()
        for k, img in enumerate(data["images"]):
            try:
                image_id, file_name = _int_id(img), img["file_name"]
                if not isinstance(file_name, str) or image_id in seen:
                    raise ValueError(f"bad file_name {file_name!r} or duplicate id {image_id}")
            except (KeyError, TypeError, ValueError) as err:
                report.record(
                    MALFORMED_ANNOTATION_SKIPPED, f"{ann_file} (image entry {k})", repr(err)
                )
                continue
            seen.add(image_id)
            written = (img.get("width"), img.get("height"))
            entries.append((image_id, file_name, written if all(map(_number, written)) else None))

        by_image: dict[int, list[tuple[int, dict]]] = defaultdict(list)
        for k, ann in enumerate(data.get("annotations") or []):
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if isinstance(image_id, int) and image_id in seen:
                by_image[image_id].append((k, ann))
            else:
                where = f"{ann_file} ({self._ann_name(ann, k)})"
                report.record(
                    MALFORMED_ANNOTATION_SKIPPED, where, f"image_id {image_id!r} not in images"
                )

        full_check = resolve_check(check_images, len(entries))
        records = []
        for image_id, file_name, written in entries:
            path = image_root / file_name
            size = checked_image_size(
                path, f"{ann_file} (image id {image_id}, {file_name})", full_check, report
            )
            if size is None:
                continue
            if written is not None and tuple(int(v) for v in written) != size:
                report.record(
                    SIZE_MISMATCH,
                    f"{ann_file} (image id {image_id})",
                    f"annotated {int(written[0])}x{int(written[1])}, {file_name} is {size[0]}x{size[1]}",
                )
            builder = RecordBuilder()
            for k, ann in by_image.get(image_id, []):
                self._add_annotation(
                    builder,
                    ann,
                    f"{ann_file} ({self._ann_name(ann, k)})",
                    size,
                    label_of_cat,
                    report,
                    masks,
                )
            records.append(builder.build(path, file_name, image_id, *size))

        super().__init__(
            records,
            classes,
            report,
            f"COCO {ann_file}",
            tile_size,
            tile_overlap,
            min_visible,
            masks,
        )

    @staticmethod
    def _ann_name(ann: Any, k: int) -> str:
        if isinstance(ann, dict) and "id" in ann:
            return f"annotation id {ann['id']}"
        return f"annotation {k}"

    @staticmethod
    def _add_annotation(
        builder: RecordBuilder,
        ann: dict,
        where: str,
        size: tuple[int, int],
        label_of_cat: dict[int, int],
        report: BadInputReport,
        masks: bool = False,
    ) -> None:
        bbox = ann.get("bbox")
        if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(map(_number, bbox)):
            report.record(MALFORMED_ANNOTATION_SKIPPED, where, f"bbox {bbox!r} is not [x, y, w, h]")
            return
        category = ann.get("category_id")
        if not isinstance(category, int) or category not in label_of_cat:
            report.record(UNKNOWN_CLASS_DROPPED, where, f"category_id {category!r}")
            return
        segmentation = None
        if masks:
            try:
                rle = segmentation_to_rle(ann.get("segmentation"), size[1], size[0])
            except ValueError as err:
                report.record(MALFORMED_ANNOTATION_SKIPPED, where, str(err))
                return
            segmentation = rle["counts"]
        x, y, w, h = (float(v) for v in bbox)
        box = repair_box([x, y, x + w, y + h], size[0], size[1], report, where)
        if box is None:
            return
        crowd, ignore = bool(ann.get("iscrowd", 0)), bool(ann.get("ignore", 0))
        builder.add(
            box,
            label_of_cat[category],
            train=not (crowd or ignore),
            iscrowd=crowd,
            ignore=ignore,
            segmentation=segmentation,
        )
