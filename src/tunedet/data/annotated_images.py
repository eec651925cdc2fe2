"""What the file readers (COCO, VOC, YOLO) share: image checks, box repair, tiling, GT.

A reader parses its annotation format into one `ImageRecord` per usable
image and hands the list to `AnnotatedImageDataset`, which serves samples,
cuts tiles and writes the COCO ground truth.

Image check rule (``check_images``), done once at construction:

- ``"header"``: every image is opened and its header read (format, size).
  Missing files and files PIL cannot identify are skipped and counted.
- ``"full"``: the header check plus a full check of the pixel data -- PNG
  CRC/structure by ``Image.verify()``, JPEG by decoding at 1/8 scale (which
  still reads the whole compressed stream), other formats by a full decode.
  Truncated or corrupt images are skipped and counted before training starts.
- ``"auto"`` (default): ``"full"`` for datasets of at most
  ``FULL_CHECK_LIMIT`` images, ``"header"`` above (a full check of 100k images
  would take minutes).

An image that passed the checks but still fails to decode in ``__getitem__``
(only possible after a header-only check, or if the file changed) raises
`DataError` naming the file; no other sample is substituted for it.

Coordinates stay as the annotation file writes them, read as continuous COCO
pixel coordinates (no "+1"; see docs/ARCHITECTURE.md), and are clipped to the
image. In the COCO ground truth, ``category_id`` equals the 0-based label.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from tunedet.data.bad_input import (
    BOX_CLIPPED,
    MALFORMED_ANNOTATION_SKIPPED,
    MISSING_IMAGE_SKIPPED,
    UNREADABLE_IMAGE_SKIPPED,
    ZERO_AREA_DROPPED,
    BadInputReport,
    DataError,
)
from tunedet.data.masks import decode_rles, encode_masks, rle_area
from tunedet.data.tiling import crop_to_tile, make_tiles

FULL_CHECK_LIMIT = 2000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
ImageCheck = Literal["auto", "header", "full"]

# What PIL raises on a bad file: OSError (incl. UnidentifiedImageError, truncation),
# SyntaxError (broken PNG chunks), ValueError, EOFError, DecompressionBombError.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass
class ImageRecord:
    """One annotated image (N annotations, boxes already clipped and non-empty).

    boxes: (N, 4) float32 xyxy px; labels: (N,) int64;
    train: (N,) bool, a training target (not crowd / ignore / unused difficult);
    iscrowd, ignore, difficult: (N,) bool flags for the evaluation GT.
    segmentations: per annotation, the compressed COCO RLE counts (str) of its mask in
        this image's pixels (data/masks.py), or None (a reader without masks).
    """

    path: Path
    file: str
    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    train: np.ndarray
    iscrowd: np.ndarray
    ignore: np.ndarray
    difficult: np.ndarray
    segmentations: list[str | None] = field(default_factory=list)


@dataclass
class RecordBuilder:
    """Collects the annotations of one image, then makes its `ImageRecord`."""

    boxes: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    train: list[bool] = field(default_factory=list)
    iscrowd: list[bool] = field(default_factory=list)
    ignore: list[bool] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)
    segmentations: list[str | None] = field(default_factory=list)

    def add(
        self,
        box: np.ndarray,
        label: int,
        train: bool = True,
        iscrowd: bool = False,
        ignore: bool = False,
        difficult: bool = False,
        segmentation: str | None = None,
    ) -> None:
        self.boxes.append(box)
        self.labels.append(label)
        self.train.append(train)
        self.iscrowd.append(iscrowd)
        self.ignore.append(ignore)
        self.difficult.append(difficult)
        self.segmentations.append(segmentation)

    def build(self, path: Path, file: str, image_id: int, width: int, height: int) -> ImageRecord:
        boxes = (
            np.stack(self.boxes).astype(np.float32) if self.boxes else np.zeros((0, 4), np.float32)
        )
        return ImageRecord(
            path=path,
            file=file,
            image_id=image_id,
            width=width,
            height=height,
            boxes=boxes,
            labels=np.asarray(self.labels, dtype=np.int64),
            train=np.asarray(self.train, dtype=bool),
            iscrowd=np.asarray(self.iscrowd, dtype=bool),
            ignore=np.asarray(self.ignore, dtype=bool),
            difficult=np.asarray(self.difficult, dtype=bool),
            segmentations=list(self.segmentations),
        )


def resolve_check(check_images: ImageCheck, num_images: int) -> bool:
    """Whether to check pixel data fully (see the module docstring)."""
    if check_images == "auto":
        return num_images <= FULL_CHECK_LIMIT
    return check_images == "full"


# EXIF orientations 5-8 transpose the stored pixels (90° turns, with or without a flip)
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


_TRANSPOSE_OF_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # as ImageOps.exif_transpose


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened, not yet decoded image; 1 without one.

    A PNG's EXIF is read only where it precedes the pixel data (reading it from after
    the pixels would decode the whole file at every header check)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError, TypeError):  # an unreadable EXIF block
        return 1
    return orientation if orientation in _TRANSPOSE_OF_ORIENTATION else 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image as shown, after its EXIF orientation (the
    frame boxes are drawn in; see `to_rgb8`)."""
    width, height = image.size
    if exif_orientation(image) in TRANSPOSING_ORIENTATIONS:
        return height, width
    return width, height


def to_rgb8(image: Image.Image, file: str, orientation: int = 1) -> np.ndarray:
    """An opened image as ``(H, W, 3) uint8`` RGB, as shown.

    - ``orientation`` (`exif_orientation`, read before decoding) is applied as
      ``ImageOps.exif_transpose`` applies it, so pixels and boxes share
      the frame a viewer or labelling tool shows. ultralytics does the same: it reads
      images with ``cv2.imread`` (which applies the orientation) and computes label
      sizes with ``exif_size`` (orientations 6 and 8 swap width and height).
    - 16-bit and 32-bit integer images are scaled from 0..65535 to 0..255 (as OpenCV
      converts 16-bit images); float images in [0, 1] are scaled by 255, in [0, 255]
      kept; other values (negative, above the range, NaN) are refused with `DataError`.
      Grey images are repeated over the three channels.
    """
    if orientation in _TRANSPOSE_OF_ORIENTATION:
        image = image.transpose(_TRANSPOSE_OF_ORIENTATION[orientation])
    if image.mode not in HIGH_DEPTH_MODES:
        return np.array(image.convert("RGB"))
    values = np.asarray(image)
    if values.dtype.kind == "f":
        finite = np.isfinite(values).all()
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if not finite or low < 0 or high > 255:
            shown = "non-finite values" if not finite else f"values {low:g}..{high:g}"
            raise DataError(
                f"{file}: float image with {shown}; expected [0, 1] or [0, 255] "
                "(convert it to 8 bits)"
            )
        scaled = values * 255.0 if high <= 1.0 else values.astype(np.float64)
    else:
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or high > 65535:
            raise DataError(
                f"{file}: {image.mode} image with values {low}..{high}, beyond 16 bits "
                "(convert it to 8 bits)"
            )
        scaled = values.astype(np.float64) * (255.0 / 65535.0)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def read_image_size(path: Path, full: bool) -> tuple[int, int]:
    """``(width, height)`` of an image file as shown (after its EXIF orientation); with
    ``full`` also check its pixel data.

    Raises FileNotFoundError or one of PIL's errors on a bad file.
    """
    with Image.open(path) as image:
        width, height = oriented_size(image)
        png = image.format == "PNG"
        if full and not png:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    if full and png:
        with Image.open(path) as image:  # verify() must follow open() directly
            image.verify()
    return width, height


def checked_image_size(
    path: Path, where: str, full: bool, report: BadInputReport
) -> tuple[int, int] | None:
    """`read_image_size`, counting a missing or unreadable file in ``report`` (then None)."""
    if not path.is_file():
        report.record(MISSING_IMAGE_SKIPPED, where, f"no file {path}")
        return None
    try:
        return read_image_size(path, full)
    except _PIL_ERRORS as err:
        report.record(UNREADABLE_IMAGE_SKIPPED, where, f"{type(err).__name__}: {err}")
        return None


def load_rgb(path: Path, file: str) -> np.ndarray:
    """Decode an image file as ``(H, W, 3) uint8`` RGB (`to_rgb8`); `DataError` naming
    ``file`` if it fails."""
    try:
        with Image.open(path) as image:
            orientation = exif_orientation(image)
            image.load()
            return to_rgb8(image, file, orientation)
    except DataError:
        raise
    except _PIL_ERRORS as err:
        raise DataError(f"{file}: unreadable image: {type(err).__name__}: {err}") from err


def repair_box(
    box: Sequence[float], width: int, height: int, report: BadInputReport, where: str
) -> np.ndarray | None:
    """Clip an xyxy box to the image; None (and counted) if non-finite or empty after clipping."""
    raw = np.asarray(box, dtype=np.float64)
    if raw.shape != (4,) or not np.isfinite(raw).all():
        report.record(
            MALFORMED_ANNOTATION_SKIPPED, where, f"box {list(box)} is not 4 finite numbers"
        )
        return None
    clipped = raw.copy()
    clipped[0::2] = np.clip(raw[0::2], 0, width)
    clipped[1::2] = np.clip(raw[1::2], 0, height)
    shown = [round(float(v), 2) for v in raw]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        after = " after clipping" if (clipped != raw).any() else ""
        report.record(ZERO_AREA_DROPPED, where, f"box {shown}{after} in {width}x{height} image")
        return None
    if (clipped != raw).any():
        report.record(
            BOX_CLIPPED,
            where,
            f"box {shown} -> {[round(float(v), 2) for v in clipped]} in {width}x{height} image",
        )
    return clipped.astype(np.float32)


def find_image_by_stem(folder: Path, stems: Sequence[str]) -> Path | None:
    """The first ``folder/<stem><ext>`` that exists, over ``IMAGE_EXTENSIONS`` (any case)."""
    for stem in stems:
        for ext in IMAGE_EXTENSIONS:
            for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _xywh(box: np.ndarray) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


TILE_CACHE_BYTES = 256 * 2**20  # decoded full images kept for tiling (per worker)


class AnnotatedImageDataset(Dataset):
    """Samples, tiles and COCO GT over a list of `ImageRecord` (base of the file readers).

    Item: ``{"image": (H, W, 3) uint8, "boxes": (N, 4) float32 xyxy, "labels":
    (N,) int64, "image_id": int, "file": str}`` with only the training
    targets. With ``tile_size`` each tile is one item, ``file`` is
    ``"<file>#<x0>,<y0>"`` and image ids are 1..num_tiles. With ``masks`` (the records
    carry ``segmentations``) items add ``"masks": (N, H, W) uint8`` and the COCO GT
    ``segmentation`` (compressed RLE, cut to the tile) with ``area`` the mask's pixel
    count (COCO's definition).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        classes: list[str],
        report: BadInputReport,
        source: str,
        tile_size: int | None = None,
        tile_overlap: float = 0.25,
        min_visible: float = 0.5,
        masks: bool = False,
    ) -> None:
        if not records:
            details = f"; problems: {'; '.join(report.summary().splitlines())}" if report else ""
            raise DataError(f"{source}: no usable image{details}")
        self.records = records
        self.classes = list(classes)
        self.report = report
        self.tile_size = tile_size
        self.min_visible = min_visible
        self.masks = masks
        self.items: list[tuple[int, tuple[int, int, int, int] | None, int]] = []
        if tile_size is None:
            self.items = [(i, None, rec.image_id) for i, rec in enumerate(records)]
        else:
            for i, rec in enumerate(records):
                for tile in make_tiles((rec.height, rec.width), tile_size, tile_overlap):
                    self.items.append((i, tile, len(self.items) + 1))
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        report.log(source)

    def __len__(self) -> int:
        return len(self.items)

    def _full_image(self, record: ImageRecord) -> np.ndarray:
        if self.tile_size is None:
            return load_rgb(record.path, record.file)
        # Tiles are read in shuffled order: keep recently decoded images, up to a byte budget.
        image = self._cache.pop(record.path, None)
        if image is None:
            image = load_rgb(record.path, record.file)
        self._cache[record.path] = image
        while (
            len(self._cache) > 1 and sum(a.nbytes for a in self._cache.values()) > TILE_CACHE_BYTES
        ):
            self._cache.popitem(last=False)
        return image

    def __getitem__(self, index: int) -> dict:
        record_index, tile, image_id = self.items[index]
        record = self.records[record_index]
        image = self._full_image(record)
        if image.shape[:2] != (record.height, record.width):
            raise DataError(
                f"{record.file}: image is {image.shape[1]}x{image.shape[0]} now, "
                f"{record.width}x{record.height} when the dataset was built"
            )
        if tile is None:
            keep = record.train
            boxes, labels, file = record.boxes[keep], record.labels[keep], record.file
            index = np.flatnonzero(keep)
        else:
            x0, y0, x1, y1 = tile
            image = np.ascontiguousarray(image[y0:y1, x0:x1])
            cut = crop_to_tile(record.boxes, record.labels, tile, self.min_visible)
            keep = cut.keep & record.train[cut.index]
            boxes, labels, file = cut.boxes[keep], cut.labels[keep], f"{record.file}#{x0},{y0}"
            index = cut.index[keep]
        sample = {
            "image": image,
            "boxes": boxes.astype(np.float32).reshape(-1, 4),
            "labels": labels.astype(np.int64),
            "image_id": image_id,
            "file": file,
        }
        if self.masks:
            sample["masks"] = self._masks(record, index, tile)
        return sample

    @staticmethod
    def _masks(
        record: ImageRecord, index: np.ndarray, tile: tuple[int, int, int, int] | None
    ) -> np.ndarray:
        """Masks ``(len(index), H, W) uint8`` of the record's annotations ``index``, cut to
        ``tile`` (decoded one at a time then: a large image's masks may not fit at once)."""
        size = [record.height, record.width]
        rles = [{"size": size, "counts": record.segmentations[i]} for i in index]
        if tile is None:
            return decode_rles(rles, record.height, record.width)
        x0, y0, x1, y1 = tile
        masks = np.zeros((len(rles), y1 - y0, x1 - x0), np.uint8)
        for k, rle in enumerate(rles):
            masks[k] = decode_rles([rle], record.height, record.width)[0, y0:y1, x0:x1]
        return masks

    def coco_ground_truth(self) -> dict:
        """COCO GT of every item (tile) in its own pixels; ``category_id`` == label.

        Crowd boxes have ``iscrowd: 1``; VOC difficult boxes ``difficult: 1,
        ignore: 1``; tile-cut boxes below ``min_visible`` ``ignore: 1``.
        """
        images, annotations = [], []
        for record_index, tile, image_id in self.items:
            rec = self.records[record_index]
            if tile is None:
                file, width, height = rec.file, rec.width, rec.height
                index = np.arange(len(rec.boxes))
                boxes, ignore = rec.boxes, rec.ignore
            else:
                x0, y0, x1, y1 = tile
                file, width, height = f"{rec.file}#{x0},{y0}", x1 - x0, y1 - y0
                cut = crop_to_tile(rec.boxes, rec.labels, tile, self.min_visible)
                index, boxes = cut.index, cut.boxes
                ignore = rec.ignore[index] | ~cut.keep
            images.append({"id": image_id, "file_name": file, "width": width, "height": height})
            if self.masks and tile is None:
                size = [rec.height, rec.width]
                rles = [{"size": size, "counts": rec.segmentations[i]} for i in index]
            elif self.masks:
                rles = encode_masks(self._masks(rec, index, tile))
            for k, i in enumerate(index):
                xywh = _xywh(boxes[k])
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(rec.labels[i]),
                        "bbox": xywh,
                        "area": xywh[2] * xywh[3],
                        "iscrowd": int(rec.iscrowd[i]),
                        "ignore": int(ignore[k]),
                        "difficult": int(rec.difficult[i]),
                    }
                )
                if self.masks:
                    annotations[-1]["segmentation"] = rles[k]
                    annotations[-1]["area"] = float(rle_area(rles[k]))
        categories = [{"id": i, "name": name} for i, name in enumerate(self.classes)]
        return {"images": images, "annotations": annotations, "categories": categories}
