"""Cutting large images into overlapping tiles, and the boxes with them.

A box cut by a tile edge is kept (clipped to the tile) when its *visible
fraction* -- area inside the tile / full area -- is at least ``min_visible``.
A box that is partly visible but below ``min_visible`` is not a training
target; in the evaluation ground truth it stays as an ``ignore`` region, so a
detector that finds the visible part is not charged a false positive.

The readers (`VOCDataset`, `CocoDataset`, `YOLODataset`) take ``tile_size``,
``tile_overlap`` and ``min_visible`` and use the two functions below; each
tile is then one sample with its own ``image_id``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # the last tile is aligned to the border
    return starts


def make_tiles(
    image_size: tuple[int, int], tile_size: int, overlap: float = 0.25
) -> list[tuple[int, int, int, int]]:
    """Tiles ``(x0, y0, x1, y1)`` covering an image of ``image_size = (height, width)``.

    Tiles are ``tile_size`` square (or the whole side where the image is
    smaller), start every ``ceil(tile_size * (1 - overlap))`` px, and the last
    tile of each row/column is aligned to the image border, so the tiles
    cover the whole image. Row-major order.
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    height, width = image_size
    stride = max(1, math.ceil(tile_size * (1.0 - overlap)))
    tw, th = min(tile_size, width), min(tile_size, height)
    return [
        (x0, y0, x0 + tw, y0 + th)
        for y0 in _starts(height, tile_size, stride)
        for x0 in _starts(width, tile_size, stride)
    ]


class TileBoxes(NamedTuple):
    """Boxes of one tile (K = boxes that overlap the tile with positive area).

    boxes: (K, 4) float32 xyxy, clipped and in tile coordinates.
    labels: (K,) int64.
    keep: (K,) bool, visible fraction >= min_visible (training targets).
    index: (K,) int64 index of each box in the input arrays.
    """

    boxes: np.ndarray
    labels: np.ndarray
    keep: np.ndarray
    index: np.ndarray


def crop_to_tile(
    boxes: np.ndarray,
    labels: np.ndarray,
    tile: tuple[int, int, int, int],
    min_visible: float = 0.5,
) -> TileBoxes:
    """Clip ``boxes (N, 4) xyxy`` to ``tile`` and apply the visible-fraction rule.

    Boxes with no visible area are left out; the others are returned with
    ``keep = visible_area / area >= min_visible``.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    x0, y0, x1, y1 = tile
    clipped = np.empty_like(boxes)
    clipped[:, 0::2] = np.clip(boxes[:, 0::2], x0, x1)
    clipped[:, 1::2] = np.clip(boxes[:, 1::2], y0, y1)
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    index = np.flatnonzero(visible > 0)
    fraction = visible[index] / np.maximum(area[index], 1e-12)
    shifted = clipped[index] - np.array([x0, y0, x0, y0], dtype=np.float32)
    return TileBoxes(
        boxes=shifted.astype(np.float32),
        labels=labels[index],
        keep=fraction >= min_visible - 1e-6,
        index=index.astype(np.int64),
    )
