"""Pixels that images of a dataset share: overlapping tiles of one large image (the usual
way aerial and satellite imagery is annotated) and duplicated images.

A held-out image whose pixels are also in training images scores what the model has
memorised, and a search or a TTA check ranked on it favours over-fitting. ``tunedet
fit`` therefore finds the shared regions of every pair of images before it holds a split
out, holds out a compact group of overlapping tiles rather than scattered ones, and masks
what the training images still share with the held-out group (``tuning/fit_data.py``).

Matching is exact, on 8 × 8 blocks: every block position of an image gets an integer
hash (the block's pixels dotted with two sets of fixed random integer weights, sums
that float32 computes exactly),
and the other images are queried with their blocks on a 16-px grid whose pixels vary (a
flat block, sky or padding, would match anything flat). Two queries that agree on the
image and on the offset place one image in the other's frame. Lossless copies are found
(PNG or TIFF tiles, duplicated files); tiles re-encoded separately as JPEG differ in
their pixels and are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 8  # side of the hashed blocks (px)
QUERY_STRIDE = 16  # grid of the query blocks in each training image (px)
MIN_BLOCK_STD = 4.0  # grey levels; flatter blocks are not used as queries
MIN_AGREEING = 2  # queries that must agree on the image and the offset
BATCH = 32  # images of one size hashed together


@dataclass(frozen=True)
class SharedRegion:
    """Image ``other`` covers ``box`` = (x0, y0, x1, y1) of this image, in this image's
    pixels."""

    other: int
    box: tuple[int, int, int, int]

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.box
        return (x1 - x0) * (y1 - y0)


def _weights() -> torch.Tensor:
    """Two sets of integer weights below 342: a block's dot product stays under 2^24
    (192 · 255 · 341), so float32 sums are exact in any order."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(1, 342, (2, 3, BLOCK, BLOCK), generator=generator).float()


def _key(dots: np.ndarray) -> np.ndarray:
    """One float64 key from the two exact dot products (last axis): h0 · 2^24 + h1."""
    dots = dots.astype(np.float64)
    return dots[..., 0] * 2.0**24 + dots[..., 1]


def block_hashes(images: np.ndarray, weights: torch.Tensor) -> np.ndarray:
    """``(B, H - 7, W - 7)`` hashes of every 8 × 8 block of ``(B, H, W, 3) uint8`` images."""
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float()
    dots = torch.nn.functional.conv2d(pixels, weights)
    return _key(dots.permute(0, 2, 3, 1).numpy())


def query_blocks(image: np.ndarray, weights: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, (y, x) positions) of the textured blocks on a 16-px grid."""
    height, width = image.shape[:2]
    if height < BLOCK or width < BLOCK:
        return np.zeros(0), np.zeros((0, 2), dtype=np.int64)
    ys = np.arange(0, height - BLOCK + 1, QUERY_STRIDE)
    xs = np.arange(0, width - BLOCK + 1, QUERY_STRIDE)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    offsets = np.arange(BLOCK)
    rows = grid[:, 0, None, None] + offsets[None, :, None]
    cols = grid[:, 1, None, None] + offsets[None, None, :]
    blocks = image[rows, cols].astype(np.float64)  # (n, 8, 8, 3)
    textured = blocks.mean(axis=-1).reshape(len(grid), -1).std(axis=1) >= MIN_BLOCK_STD
    blocks, grid = blocks[textured], grid[textured]
    flat_weights = weights.double().numpy().transpose(0, 2, 3, 1)  # (2, 8, 8, 3)
    dots = np.einsum("nyxc,kyxc->nk", blocks, flat_weights)
    return _key(dots), grid


def shared_regions(images: Sequence[np.ndarray]) -> dict[int, list[SharedRegion]]:
    """Image index -> the regions of it that are copies of pixels of other images (each
    pair is found from both sides). Images of one size are hashed in batches."""
    weights = _weights()
    queries = [query_blocks(image, weights) for image in images]
    owner = np.concatenate([np.full(len(h), i) for i, (h, _) in enumerate(queries)] + [[]])
    hashes = np.concatenate([h for h, _ in queries] + [np.zeros(0)])
    positions = np.concatenate([p for _, p in queries] + [np.zeros((0, 2), np.int64)])
    order = np.argsort(hashes, kind="stable")
    hashes, owner, positions = hashes[order], owner[order].astype(np.int64), positions[order]
    by_size: dict[tuple[int, ...], list[int]] = {}
    for k, image in enumerate(images):
        if min(image.shape[:2]) >= BLOCK:
            by_size.setdefault(image.shape, []).append(k)
    found: dict[int, list[SharedRegion]] = {}
    if not len(hashes):
        return found
    for shape, members in by_size.items():
        for start in range(0, len(members), BATCH):
            batch = np.array(members[start : start + BATCH])
            table = block_hashes(np.stack([images[k] for k in batch]), weights)
            per_image = table.shape[1] * table.shape[2]
            flat = table.reshape(-1)
            left = np.searchsorted(hashes, flat, side="left")
            right = np.searchsorted(hashes, flat, side="right")
            hit = np.nonzero(right > left)[0]  # the positions where query blocks match
            counts = right[hit] - left[hit]
            starts = np.repeat(left[hit] - np.cumsum(counts) + counts, counts)
            q = starts + np.arange(counts.sum())  # every matching query, hash ties included
            at = np.repeat(hit, counts)
            k, pos = batch[at // per_image], at % per_image
            keys = np.stack(
                [
                    k,
                    owner[q],
                    positions[q, 0] - pos // table.shape[2],
                    positions[q, 1] - pos % table.shape[2],
                ],
                axis=1,
            )
            keys = keys[keys[:, 0] != keys[:, 1]]
            if not len(keys):
                continue
            offsets, votes = np.unique(keys, axis=0, return_counts=True)
            for (k, index, dy, dx), count in zip(offsets.tolist(), votes.tolist(), strict=True):
                if count < MIN_AGREEING:
                    continue
                height, width = images[index].shape[:2]
                box = (
                    max(0, dx),
                    max(0, dy),
                    min(width, dx + shape[1]),
                    min(height, dy + shape[0]),
                )
                found.setdefault(index, []).append(SharedRegion(k, box))
    return found


def mask_regions(
    image: np.ndarray, regions: Sequence[SharedRegion]
) -> tuple[np.ndarray, np.ndarray]:
    """(the image with the regions filled with its mean colour, the boolean mask)."""
    mask = np.zeros(image.shape[:2], dtype=bool)
    for region in regions:
        x0, y0, x1, y1 = region.box
        mask[y0:y1, x0:x1] = True
    masked = image.copy()
    masked[mask] = image.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    return masked, mask


def box_coverage(boxes_xywh: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of each ``[x, y, w, h]`` box's pixels under ``mask`` (integral image)."""
    if not len(boxes_xywh):
        return np.zeros(0)
    height, width = mask.shape
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    x0 = np.clip(np.floor(boxes_xywh[:, 0]), 0, width).astype(np.int64)
    y0 = np.clip(np.floor(boxes_xywh[:, 1]), 0, height).astype(np.int64)
    x1 = np.clip(np.ceil(boxes_xywh[:, 0] + boxes_xywh[:, 2]), 0, width).astype(np.int64)
    y1 = np.clip(np.ceil(boxes_xywh[:, 1] + boxes_xywh[:, 3]), 0, height).astype(np.int64)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return inside / area
