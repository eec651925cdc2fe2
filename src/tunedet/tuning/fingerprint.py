"""A dataset's fingerprint: the measurements that ``tunedet fit``'s rules read.

Pure functions over a COCO-format ground truth (``dataset.coco_ground_truth()``: image
sizes and ``bbox`` = ``[x, y, w, h]``), as nnU-Net's "dataset fingerprint" (Isensee et
al. 2021) is over its images: image sizes, object sizes (``sqrt(w h)`` px) and aspect
ratios (``h / w``) overall and per class, objects per image, class balance, and
whether the imagery is overhead (seen from above, so it has no "up").

The overhead guess reads the boxes only. From above, no class has a preferred
orientation (its boxes are as often wider as taller), objects are many per image and
small against it; from the ground, people are tall, cars wide, and a photo holds a few
large objects. The guess is overhead when all three hold:

- every class with at least 20 boxes has ``|median log(h / w)| <= 0.15``;
- the median image holds at least 5 objects;
- the median object is at most 10 % of its image's side (``sqrt(W H)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

ORIENTATION_TOL = 0.15  # |median log(h/w)| of a class counted as "no preferred orientation"
ORIENTATION_MIN_BOXES = 20  # classes with fewer boxes are not judged
DENSE_OBJECTS = 5  # median objects per image of overhead imagery, at least
SMALL_RELATIVE = 0.10  # median object side / image side of overhead imagery, at most
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

Overhead = Literal["yes", "no", "auto"]


@dataclass
class OverheadGuess:
    """Whether the imagery is overhead; ``source`` "flag" (the user said) or "guess"."""

    overhead: bool
    source: str
    basis: str


@dataclass
class Fingerprint:
    """Measurements of one training set (all sizes in px of the original images).

    image_wh: (I, 2) image widths and heights; box_wh: (N, 2) box widths and heights;
    box_labels: (N,) 0-based labels; box_image: (N,) index into ``image_wh`` of each
    box's image; objects_per_image: (I,) boxes per image.
    """

    classes: list[str]
    image_wh: np.ndarray
    box_wh: np.ndarray
    box_labels: np.ndarray
    box_image: np.ndarray
    objects_per_image: np.ndarray
    overhead: OverheadGuess = field(default_factory=lambda: OverheadGuess(False, "guess", ""))

    @property
    def num_images(self) -> int:
        return len(self.image_wh)

    @property
    def num_boxes(self) -> int:
        return len(self.box_wh)

    @property
    def sizes(self) -> np.ndarray:
        """(N,) object sizes ``sqrt(w h)`` px."""
        return np.sqrt(self.box_wh[:, 0] * self.box_wh[:, 1])

    @property
    def relative_sizes(self) -> np.ndarray:
        """(N,) object size / its image's size ``sqrt(W H)``."""
        image_side = np.sqrt(self.image_wh[:, 0] * self.image_wh[:, 1])
        return self.sizes / image_side[self.box_image]

    @property
    def log_aspects(self) -> np.ndarray:
        """(N,) ``log(h / w)`` of every box."""
        return np.log(self.box_wh[:, 1] / self.box_wh[:, 0])

    def size_quantiles(self, scale: float = 1.0) -> dict[str, float]:
        """Object size quantiles (p5 ... p95) after scaling the images by ``scale``."""
        return _quantiles(self.sizes * scale)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.box_labels, minlength=len(self.classes))

    def summary(self) -> dict[str, Any]:
        """Plain numbers for the report and ``fingerprint.json``."""
        counts = self.class_counts()
        per_class = []
        for label, name in enumerate(self.classes):
            mine = self.box_labels == label
            sizes, aspects = self.sizes[mine], self.log_aspects[mine]
            per_class.append(
                {
                    "class": name,
                    "boxes": int(counts[label]),
                    "images": int(len(np.unique(self.box_image[mine]))),
                    "median_size": _round(np.median(sizes)) if len(sizes) else None,
                    "median_aspect_h_w": _round(np.exp(np.median(aspects))) if len(sizes) else None,
                }
            )
        present = counts[counts > 0]
        return {
            "images": self.num_images,
            "boxes": self.num_boxes,
            "classes": len(self.classes),
            "image_width": _quantiles(self.image_wh[:, 0]),
            "image_height": _quantiles(self.image_wh[:, 1]),
            "object_size_px": _quantiles(self.sizes),
            "object_size_relative": _quantiles(self.relative_sizes, digits=4),
            "aspect_h_w": _quantiles(np.exp(self.log_aspects), digits=3),
            "objects_per_image": {
                **_quantiles(self.objects_per_image),
                "mean": _round(self.objects_per_image.mean()) if self.num_images else 0.0,
                "max": int(self.objects_per_image.max()) if self.num_images else 0,
                "empty_fraction": _round((self.objects_per_image == 0).mean(), 3),
            },
            "class_imbalance": _round(present.max() / present.min()) if len(present) else None,
            "per_class": per_class,
            "overhead": {
                "overhead": self.overhead.overhead,
                "source": self.overhead.source,
                "basis": self.overhead.basis,
            },
        }


def _round(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


def _quantiles(values: np.ndarray, digits: int = 2) -> dict[str, float]:
    if len(values) == 0:
        return {f"p{round(q * 100)}": float("nan") for q in QUANTILES}
    found = np.quantile(values, QUANTILES)
    return {f"p{round(q * 100)}": _round(v, digits) for q, v in zip(QUANTILES, found, strict=True)}


def fingerprint_from_coco(gt: dict, classes: list[str], overhead: Overhead = "auto") -> Fingerprint:
    """The fingerprint of a COCO ground truth whose ``category_id`` is the 0-based label
    (what every tunedet dataset's ``coco_ground_truth()`` returns). Crowd and ignored
    boxes and boxes without area are left out."""
    images = gt.get("images") or []
    if not images:
        raise ValueError("the dataset has no image: nothing to fingerprint")
    row_of = {img["id"]: k for k, img in enumerate(images)}
    image_wh = np.array([[img["width"], img["height"]] for img in images], np.float64)
    wh, labels, rows = [], [], []
    for ann in gt.get("annotations") or []:
        if ann.get("iscrowd") or ann.get("ignore"):
            continue
        w, h = float(ann["bbox"][2]), float(ann["bbox"][3])
        if w <= 0 or h <= 0 or ann["image_id"] not in row_of:
            continue
        wh.append((w, h))
        labels.append(int(ann["category_id"]))
        rows.append(row_of[ann["image_id"]])
    box_image = np.array(rows, np.int64)
    fp = Fingerprint(
        classes=list(classes),
        image_wh=image_wh,
        box_wh=np.array(wh, np.float64).reshape(-1, 2),
        box_labels=np.array(labels, np.int64),
        box_image=box_image,
        objects_per_image=np.bincount(box_image, minlength=len(images)),
    )
    if fp.num_boxes == 0:
        raise ValueError("the dataset has no annotated object: nothing to fit")
    fp.overhead = guess_overhead(fp, overhead)
    return fp


def guess_overhead(fp: Fingerprint, flag: Overhead = "auto") -> OverheadGuess:
    """The user's ``--overhead yes|no``, or the guess of the module docstring with the
    three measurements behind it."""
    if flag in ("yes", "no"):
        return OverheadGuess(flag == "yes", "flag", f"--overhead {flag} (given by the user)")
    if flag != "auto":
        raise ValueError(f"--overhead must be yes, no or auto, got {flag!r}")
    tilts = []
    for label, name in enumerate(fp.classes):
        aspects = fp.log_aspects[fp.box_labels == label]
        if len(aspects) >= ORIENTATION_MIN_BOXES:
            tilts.append((abs(float(np.median(aspects))), name))
    per_image = float(np.median(fp.objects_per_image))
    relative = float(np.median(fp.relative_sizes))
    if tilts:
        tilt, tilted_class = max(tilts)
        symmetric = tilt <= ORIENTATION_TOL
        orientation = (
            f"largest |median log(h/w)| of a class {tilt:.2f} ({tilted_class}; "
            f"{'<=' if symmetric else '>'} {ORIENTATION_TOL})"
        )
    else:
        symmetric = False
        orientation = f"no class has {ORIENTATION_MIN_BOXES} boxes to judge its orientation"
    dense = per_image >= DENSE_OBJECTS
    small = relative <= SMALL_RELATIVE
    overhead = symmetric and dense and small
    basis = (
        f"{orientation}; median {per_image:g} objects per image "
        f"({'>=' if dense else '<'} {DENSE_OBJECTS}); median object {relative:.1%} of its image's "
        f"side ({'<=' if small else '>'} {SMALL_RELATIVE:.0%})"
    )
    return OverheadGuess(overhead, "guess", basis)
