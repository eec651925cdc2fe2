"""YOLO anchors: explicit (width, height) pairs per level, centred on every cell.

YOLOv3 (Redmon & Farhadi, 2018) clusters COCO's boxes into 9 (w, h) at 416 px input and
gives three to each stride: (10,13) (16,30) (33,23) on stride 8, (30,61) (62,45)
(59,119) on 16 and (116,90) (156,198) (373,326) on 32 — the largest on the coarsest map.
Levels are listed finest first, in the order of the neck's maps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tunedet.anchors.grid import GridAnchorGenerator
from tunedet.config.registry import register

YOLOV3_SIZES = (
    ((10.0, 13.0), (16.0, 30.0), (33.0, 23.0)),
    ((30.0, 61.0), (62.0, 45.0), (59.0, 119.0)),
    ((116.0, 90.0), (156.0, 198.0), (373.0, 326.0)),
)


@register("anchor_generator", "yolo")
class YOLOAnchorGenerator(GridAnchorGenerator):
    """Anchors of the given ``sizes[level] = ((w, h), ...)`` at every cell of each level.

    Args:
        strides: stride in pixels of each level (finest first).
        sizes: per level, the (w, h) in pixels of its anchors; every level the same count.
        center_offset: anchor centre within its cell, in strides (0.5: the cell centre,
            which the ``grid`` assigner and the ``yolo`` box coder expect).
    """

    def __init__(
        self,
        strides: tuple[int, ...] = (8, 16, 32),
        sizes: tuple[tuple[tuple[float, float], ...], ...] = YOLOV3_SIZES,
        center_offset: float = 0.5,
    ):
        if len(sizes) != len(strides):
            raise ValueError(f"sizes has {len(sizes)} levels but strides has {len(strides)}")
        counts = {len(level) for level in sizes}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"every level needs the same, non-zero number of sizes, got {sizes}")
        if any(w <= 0 or h <= 0 for level in sizes for w, h in level):
            raise ValueError(f"anchor sizes must be positive, got {sizes}")
        self.strides = tuple(int(s) for s in strides)
        self.sizes = tuple(tuple((float(w), float(h)) for w, h in level) for level in sizes)
        self.center_offset = float(center_offset)
        self._cache: dict[tuple, list[Tensor]] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes[0])

    def base_anchors(self, level: int) -> Tensor:
        """Zero-centred anchors of one level: (A, 4) xyxy float64, in the order of ``sizes``."""
        wh = torch.tensor(self.sizes[level], dtype=torch.float64)
        return torch.cat([-wh, wh], dim=1) / 2

    def __repr__(self) -> str:
        return (
            f"YOLOAnchorGenerator(strides={self.strides}, sizes={self.sizes}, "
            f"center_offset={self.center_offset})"
        )
