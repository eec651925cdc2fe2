"""YOLO txt reader: one ``<stem>.txt`` per image, a line ``class cx cy w h`` per box.

Centre and size are normalised to [0, 1] by the image width/height. An image
without a label file is a background (empty) image, as in the YOLO
convention; a folder with no label file at all is an error (a wrong
``label_dir`` would otherwise silently give an empty dataset). A bad line is
skipped and counted as ``file:line``.

``label_dir=None``: the ultralytics layout, ``img_dir`` with its last path
component named ``images`` replaced by ``labels`` (``ds/images/train`` ->
``ds/labels/train``, ``ds/images`` -> ``ds/labels``) when that folder exists;
otherwise ``img_dir`` itself (labels beside the images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from tunedet.config.registry import register
from tunedet.data.annotated_images import (
    IMAGE_EXTENSIONS,
    AnnotatedImageDataset,
    ImageCheck,
    RecordBuilder,
    checked_image_size,
    repair_box,
    resolve_check,
)
from tunedet.data.bad_input import (
    MALFORMED_ANNOTATION_SKIPPED,
    UNKNOWN_CLASS_DROPPED,
    BadInputReport,
    DataError,
)


def default_label_dir(img_dir: Path) -> Path:
    """The label folder of ``img_dir`` (see the module docstring)."""
    parts = list(img_dir.parts)
    for i in reversed(range(len(parts))):
        if parts[i] == "images":
            labels = Path(*parts[:i], "labels", *parts[i + 1 :])
            return labels if labels.is_dir() else img_dir
    return img_dir


@register("dataset", "yolo")
class YOLODataset(AnnotatedImageDataset):
    """Images in a folder with YOLO txt labels.

    Args:
        img_dir: folder of images (not searched recursively).
        classes: class names, indexed by the class number in the txt files (a
            validation set may leave them out: it takes the training set's).
        label_dir: folder of ``<stem>.txt``; None: see the module docstring.
        strict: raise `DataError` on the first bad input instead of repairing.
        check_images: image check at construction (see annotated_images.py).
        tile_size: cut images into square tiles of this size; None: whole images.
        tile_overlap: overlap of neighbouring tiles, as a fraction of tile_size.
        min_visible: a tile-cut box is kept if this fraction of it is inside.
    """

    def __init__(
        self,
        img_dir: str,
        classes: list[str] | None = None,
        label_dir: str | None = None,
        strict: bool = False,
        check_images: ImageCheck = "auto",
        tile_size: Annotated[int, Field(ge=1)] | None = None,
        tile_overlap: Annotated[float, Field(ge=0, lt=1)] = 0.25,
        min_visible: Annotated[float, Field(ge=0, le=1)] = 0.5,
    ) -> None:
        if not classes:
            raise ValueError(f"YOLO {img_dir}: name the classes (classes: [name0, name1, ...])")
        images_root = Path(img_dir)
        if not images_root.is_dir():
            raise FileNotFoundError(f"YOLO image folder {img_dir} does not exist")
        labels_root = Path(label_dir) if label_dir is not None else default_label_dir(images_root)
        image_paths = sorted(
            p for p in images_root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        label_paths = [labels_root / f"{p.stem}.txt" for p in image_paths]
        if image_paths and not any(p.is_file() for p in label_paths):
            raise DataError(
                f"{labels_root}: no YOLO label file (<stem>.txt) for any of the "
                f"{len(image_paths)} images in {images_root}"
            )
        report = BadInputReport(strict)
        full_check = resolve_check(check_images, len(image_paths))

        records = []
        for image_path, label_path in zip(image_paths, label_paths, strict=True):
            size = checked_image_size(image_path, str(image_path), full_check, report)
            if size is None:
                continue
            builder = RecordBuilder()
            if label_path.is_file():
                self._read_labels(builder, label_path, size, len(classes), report)
            file = image_path.name
            records.append(builder.build(image_path, file, len(records) + 1, *size))

        super().__init__(
            records, classes, report, f"YOLO {img_dir}", tile_size, tile_overlap, min_visible
        )

    @staticmethod
    def _read_labels(
        builder: RecordBuilder,
        label_path: Path,
        size: tuple[int, int],
        num_classes: int,
        report: BadInputReport,
    ) -> None:
        width, height = size
        try:
            text = label_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            report.record(MALFORMED_ANNOTATION_SKIPPED, str(label_path), f"unreadable: {err}")
            return
        for line_no, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{label_path}:{line_no}"
            try:
                if len(fields) != 5:
                    raise ValueError(f"{len(fields)} fields, expected 'class cx cy w h'")
                number = float(fields[0])
                if number != int(number):
                    raise ValueError(f"class {fields[0]!r} is not an integer")
                cx, cy, w, h = (float(v) for v in fields[1:])
            except (ValueError, OverflowError) as err:
                report.record(MALFORMED_ANNOTATION_SKIPPED, where, f"{line.strip()!r}: {err}")
                continue
            label = int(number)
            if not 0 <= label < num_classes:
                report.record(
                    UNKNOWN_CLASS_DROPPED, where, f"class {label} not in 0..{num_classes - 1}"
                )
                continue
            raw = [
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            ]
            box = repair_box(raw, width, height, report, where)
            if box is not None:
                builder.add(box, label)
