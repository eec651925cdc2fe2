"""Instance masks as COCO run-length encodings (RLE), through faster_coco_eval's mask API.

COCO's RLE runs over the pixels in column-major (Fortran) order, starting with a
run of zeros: ``{"size": [h, w], "counts": [...]}`` (uncompressed) or ``"counts":
"<string>"`` (compressed: each count as 5-bit chunks, ``chr(48 + chunk)``, with a
continuation bit 0x20 and a sign bit 0x10 in the last chunk, counts from the fourth
on stored as the difference to the count two places before; Dollar & Lin's
``maskApi.c``). A segmentation may also be a list of polygons ``[[x1, y1, x2, y2,
...], ...]`` in pixel coordinates, rasterised by the same API as pycocotools.

Compressed counts are stored with ``str`` counts (JSON-ready). The mask API does not
check its input (a bad count list makes it read or write out of bounds), so
`segmentation_to_rle` checks every segmentation before handing it over.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from faster_coco_eval.core import mask as mask_api

MAX_CHUNKS = 7  # 35 bits: more than any count of a 2**31-pixel image needs


def _with_str_counts(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Compressed RLEs ``{"size": [h, w], "counts": str}`` of binary ``masks (N, h, w)``
    (nonzero = inside)."""
    masks = np.asarray(masks)
    if len(masks) == 0:
        return []
    binary = np.asfortranarray((masks > 0).transpose(1, 2, 0).astype(np.uint8))
    return [_with_str_counts(rle) for rle in mask_api.encode(binary)]


def decode_rles(rles: list[dict], height: int, width: int) -> np.ndarray:
    """Masks ``(N, height, width) uint8`` (0/1) of RLEs of that size."""
    if not rles:
        return np.zeros((0, height, width), np.uint8)
    decoded = mask_api.decode([dict(rle) for rle in rles])  # (h, w, N)
    return np.ascontiguousarray(decoded.transpose(2, 0, 1), dtype=np.uint8)


def rle_area(rle: dict) -> int:
    """Number of pixels inside an RLE."""
    return int(mask_api.area([dict(rle)])[0])


def compressed_counts(counts: str) -> np.ndarray:
    """The run lengths ``(R,) int64`` that a compressed RLE string encodes (maskApi.c's
    ``rleFrString``); ValueError when the string is not a complete encoding."""
    try:
        chunks = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        raise ValueError("compressed RLE counts are not ASCII") from None
    if chunks.size == 0:
        raise ValueError("compressed RLE counts are empty")
    if ((chunks < 0) | (chunks > 63)).any():
        raise ValueError("compressed RLE counts hold a character outside '0'..'o'")
    more = (chunks & 0x20) != 0
    if more[-1]:
        raise ValueError("compressed RLE counts end inside a number (truncated)")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > MAX_CHUNKS:
        raise ValueError("compressed RLE counts hold a number too large for an image")
    position = np.arange(chunks.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((chunks & 0x1F) << (5 * position), starts)
    negative = (chunks[ends] & 0x10) != 0
    values = np.where(negative, values - (np.int64(1) << (5 * lengths)), values)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # counts from index 3 on are deltas to index - 2
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def _check_runs(runs: np.ndarray, height: int, width: int) -> None:
    if (runs < 0).any():
        raise ValueError("RLE has a negative count")
    if int(runs.sum()) != height * width:
        raise ValueError(f"RLE counts cover {int(runs.sum())} pixels, not {height}x{width}")


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) of an image of
    ``height x width`` as compressed RLE; ValueError saying what is malformed.

    Polygons need an even number (>= 6) of finite coordinates each; an RLE's ``size``
    must be ``[height, width]`` and its counts non-negative runs covering the image.
    """
    if segmentation is None:
        raise ValueError("no segmentation")
    if isinstance(segmentation, list):
        if not segmentation or not all(isinstance(p, list) for p in segmentation):
            raise ValueError("segmentation is not a non-empty list of polygons")
        for polygon in segmentation:
            if len(polygon) < 6 or len(polygon) % 2 or not all(map(_finite_number, polygon)):
                raise ValueError(
                    f"polygon of {len(polygon)} values is not >= 3 (x, y) pairs of finite numbers"
                )
        polygons = [[float(v) for v in p] for p in segmentation]
        return _with_str_counts(mask_api.merge(mask_api.frPyObjects(polygons, height, width)))
    if not isinstance(segmentation, dict):
        raise ValueError(f"segmentation is a {type(segmentation).__name__}, not polygons or RLE")
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if (
        not isinstance(size, list | tuple)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        raise ValueError(f"RLE size {size!r} is not [height, width]")
    if list(size) != [height, width]:
        raise ValueError(f"RLE size {list(size)} differs from the image's [{height}, {width}]")
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise ValueError("uncompressed RLE counts are not all integers")
        _check_runs(np.asarray(counts, np.int64), height, width)
        rle = mask_api.frPyObjects({"size": [height, width], "counts": counts}, height, width)
        return _with_str_counts(rle)
    if isinstance(counts, str):
        _check_runs(compressed_counts(counts), height, width)
        return {"size": [height, width], "counts": counts}
    raise ValueError(f"RLE counts are a {type(counts).__name__}, not a list or a string")
