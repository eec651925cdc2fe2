"""Pascal VOC XML reader.

Layouts: ``root/Annotations/*.xml`` with images in ``root/JPEGImages/`` (the
devkit layout), or a plain folder of ``*.xml`` with the images beside them.
The image is the XML's ``<filename>``; if that file is absent, the same stem
with any image extension is used (counted as "image found by stem").

Coordinates: the original devkit writes 1-based inclusive pixel indices, but
many tools (and the trees set) write 0-based or continuous values, and a file
does not say which. Coordinates are therefore kept as written and read as
continuous COCO-style coordinates (a box 10..20 is 10 px wide), clipped to
the image; the error of this choice on devkit files is at most 1 px.

``difficult`` objects are not training targets unless ``use_difficult``; they
are always in `coco_ground_truth()` with ``difficult: 1, ignore: 1`` (the VOC
protocol neither rewards nor penalises them).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated
from xml.parsers import expat

from pydantic import Field

from tunedet.config.registry import register
from tunedet.data.annotated_images import (
    AnnotatedImageDataset,
    ImageCheck,
    RecordBuilder,
    checked_image_size,
    find_image_by_stem,
    repair_box,
    resolve_check,
)
from tunedet.data.bad_input import (
    IMAGE_FOUND_BY_STEM,
    MALFORMED_ANNOTATION_SKIPPED,
    MISSING_IMAGE_SKIPPED,
    SIZE_MISMATCH,
    UNKNOWN_CLASS_DROPPED,
    BadInputReport,
    DataError,
)


class XMLParseError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def parse_xml_with_lines(path: Path) -> tuple[ET.Element, dict[int, int]]:
    """Parse an XML file; return the root and ``{id(element): line}`` for every element.

    Raises `XMLParseError` with the line of the first syntax error.
    """
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    lines: dict[int, int] = {}

    def start(tag: str, attrs: dict[str, str]) -> None:
        lines[id(builder.start(tag, attrs))] = parser.CurrentLineNumber

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        with open(path, "rb") as f:
            parser.ParseFile(f)
    except expat.ExpatError as err:
        raise XMLParseError(
            err.lineno, f"XML parse error: {expat.ErrorString(err.code)} (column {err.offset + 1})"
        ) from None
    return builder.close(), lines


def _float(element: ET.Element | None, tag: str) -> float:
    text = element.findtext(tag) if element is not None else None
    if text is None:
        raise ValueError(f"no <{tag}>")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"<{tag}> is {text.strip()!r}, not a number") from None


def _flag(element: ET.Element, tag: str) -> bool:
    return (element.findtext(tag) or "0").strip().lower() in ("1", "true", "yes")


def _select_stems(xml_dir: Path, files: list[str] | None, exclude: list[str] | None) -> list[str]:
    if files is None:
        stems = sorted(p.stem for p in xml_dir.glob("*.xml"))
    else:
        stems = [Path(name).stem if name.endswith(".xml") else name for name in files]
        missing = [s for s in stems if not (xml_dir / f"{s}.xml").is_file()]
        if missing:
            raise DataError(f"{xml_dir}: no annotation file for {', '.join(missing[:5])}")
    dropped = {Path(name).stem if name.endswith(".xml") else name for name in exclude or ()}
    return [s for s in stems if s not in dropped]


def voc_class_names(
    root: str | Path,
    files: list[str] | None = None,
    exclude: list[str] | None = None,
    rename: dict[str, str] | None = None,
) -> list[str]:
    """The sorted set of (renamed) object names in a VOC folder's XML files: the classes
    `VOCDataset` uses when none are given. Unparsable files are left to the reader."""
    rename = rename or {}
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"VOC root folder {root} does not exist")
    xml_dir = base / "Annotations" if (base / "Annotations").is_dir() else base
    names = set()
    for stem in _select_stems(xml_dir, files, exclude):
        try:
            root_el, _ = parse_xml_with_lines(xml_dir / f"{stem}.xml")
        except (XMLParseError, OSError):
            continue
        for obj in root_el.iter("object"):
            name = (obj.findtext("name") or "").strip()
            names.add(rename.get(name, name))
    return sorted(n for n in names if n)


@register("dataset", "voc")
class VOCDataset(AnnotatedImageDataset):
    """Pascal VOC XML files with their images (devkit layout or a flat folder).

    Args:
        root: folder of ``*.xml`` + images, or a devkit folder with
            ``Annotations/`` and ``JPEGImages/``.
        classes: class names in label order; None: the sorted set of names found.
            Objects of other classes are dropped and counted.
        files: annotation stems (or ``*.xml`` names) to read; None: all.
        exclude: annotation stems to leave out (e.g. the validation split).
        use_difficult: train on ``difficult`` objects too.
        strict: raise `DataError` on the first bad input instead of repairing.
        check_images: image check at construction (see annotated_images.py).
        tile_size: cut images into square tiles of this size; None: whole images.
        tile_overlap: overlap of neighbouring tiles, as a fraction of tile_size.
        min_visible: a tile-cut box is kept if this fraction of it is inside.
        rename: class names to rename before the class lookup, e.g.
            ``{Alive: Tree, Dead: Tree}`` to merge classes.
    """

    def __init__(
        self,
        root: str,
        classes: list[str] | None = None,
        files: list[str] | None = None,
        exclude: list[str] | None = None,
        use_difficult: bool = False,
        strict: bool = False,
        check_images: ImageCheck = "auto",
        tile_size: Annotated[int, Field(ge=1)] | None = None,
        tile_overlap: Annotated[float, Field(ge=0, lt=1)] = 0.25,
        min_visible: Annotated[float, Field(ge=0, le=1)] = 0.5,
        rename: dict[str, str] | None = None,
    ) -> None:
        rename = rename or {}
        base = Path(root)
        if not base.is_dir():
            raise FileNotFoundError(f"VOC root folder {root} does not exist")
        devkit = (base / "Annotations").is_dir()
        xml_dir = base / "Annotations" if devkit else base
        img_dir = base / "JPEGImages" if devkit and (base / "JPEGImages").is_dir() else xml_dir
        report = BadInputReport(strict)
        stems = _select_stems(xml_dir, files, exclude)
        full_check = resolve_check(check_images, len(stems))

        parsed = []  # (xml path, image path, width, height, [(line, index, object element)])
        for stem in stems:
            xml_path = xml_dir / f"{stem}.xml"
            try:
                root_el, lines = parse_xml_with_lines(xml_path)
            except XMLParseError as err:
                report.record(MALFORMED_ANNOTATION_SKIPPED, f"{xml_path}:{err.line}", str(err))
                continue
            image_path = self._find_image(root_el, xml_path, img_dir, report)
            if image_path is None:
                continue
            size = checked_image_size(image_path, str(image_path), full_check, report)
            if size is None:
                continue
            self._check_size(root_el, size, xml_path, lines, report)
            objects = [(lines.get(id(o), 0), k, o) for k, o in enumerate(root_el.iter("object"))]
            parsed.append((xml_path, image_path, size, objects))

        if classes is None:
            names = {(o.findtext("name") or "").strip() for *_, objs in parsed for *_, o in objs}
            names = {rename.get(n, n) for n in names}
            classes = sorted(n for n in names if n)
        label_of = {name: i for i, name in enumerate(classes)}

        records = []
        for xml_path, image_path, (width, height), objects in parsed:
            builder = RecordBuilder()
            for line, k, obj in objects:
                where = f"{xml_path}:{line} (object {k})"
                name = (obj.findtext("name") or "").strip()
                name = rename.get(name, name)
                if not name:
                    report.record(MALFORMED_ANNOTATION_SKIPPED, where, "object without <name>")
                    continue
                if name not in label_of:
                    report.record(UNKNOWN_CLASS_DROPPED, where, f"class {name!r} not in {classes}")
                    continue
                bndbox = obj.find("bndbox")
                try:
                    raw = [_float(bndbox, t) for t in ("xmin", "ymin", "xmax", "ymax")]
                except ValueError as err:
                    report.record(MALFORMED_ANNOTATION_SKIPPED, where, f"<bndbox>: {err}")
                    continue
                box = repair_box(raw, width, height, report, where)
                if box is None:
                    continue
                difficult = _flag(obj, "difficult")
                builder.add(
                    box,
                    label_of[name],
                    train=use_difficult or not difficult,
                    ignore=difficult,
                    difficult=difficult,
                )
            file = str(image_path.relative_to(img_dir))
            records.append(builder.build(image_path, file, len(records) + 1, width, height))

        super().__init__(
            records, classes, report, f"VOC {root}", tile_size, tile_overlap, min_visible
        )

    @staticmethod
    def _find_image(
        root_el: ET.Element, xml_path: Path, img_dir: Path, report: BadInputReport
    ) -> Path | None:
        filename = (root_el.findtext("filename") or "").strip()
        if filename and (img_dir / filename).is_file():
            return img_dir / filename
        stems = [Path(filename).stem, xml_path.stem] if filename else [xml_path.stem]
        found = find_image_by_stem(img_dir, stems)
        named = f"<filename> {filename!r}" if filename else "no <filename>"
        if found is None:
            report.record(
                MISSING_IMAGE_SKIPPED, str(xml_path), f"{named}; no image by stem in {img_dir}"
            )
            return None
        report.record(IMAGE_FOUND_BY_STEM, str(xml_path), f"{named} not found, using {found.name}")
        return found

    @staticmethod
    def _check_size(
        root_el: ET.Element,
        size: tuple[int, int],
        xml_path: Path,
        lines: dict[int, int],
        report: BadInputReport,
    ) -> None:
        size_el = root_el.find("size")
        if size_el is None:
            return
        try:
            written = (int(_float(size_el, "width")), int(_float(size_el, "height")))
        except ValueError:
            return
        if 0 not in written and written != size:
            report.record(
                SIZE_MISMATCH,
                f"{xml_path}:{lines.get(id(size_el), 0)}",
                f"<size> {written[0]}x{written[1]}, image {size[0]}x{size[1]}",
            )
