"""Overlapping tiles and copies between images: found exactly, held out as a group of
neighbours, and masked out of the training part."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunedet.tuning.fit_data import (
    find_shared_pixels,
    holdout_split,
    mask_shared_pixels,
    write_split,
)
from tunedet.tuning.shared_pixels import box_coverage, shared_regions

TILE, STRIDE = 64, 32


def scene(size: int = 160, seed: int = 0) -> np.ndarray:
    """A textured RGB image (smooth noise, as aerial imagery is) with a flat band."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size // 4, size // 4, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR)).copy()
    image[:, :12] = 90  # flat: never a query
    return image


def tiles(image: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    starts = range(0, image.shape[0] - TILE + 1, STRIDE)
    return [(x, y, image[y : y + TILE, x : x + TILE]) for y in starts for x in starts]


def expected_box(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Where tile ``b`` (its origin) covers tile ``a``, in ``a``'s pixels."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    box = (max(0, dx), max(0, dy), min(TILE, dx + TILE), min(TILE, dy + TILE))
    return box if box[2] > box[0] and box[3] > box[1] else None


def test_overlapping_tiles_are_found_exactly_and_unrelated_images_are_not():
    grid = tiles(scene())
    other = scene(seed=1)[:TILE, :TILE]
    flat = np.full((TILE, TILE, 3), 90, np.uint8)  # the same flat colour as the band
    images = [t for _, _, t in grid] + [other, flat, flat.copy()]
    found = shared_regions(images)
    for i, (x, y, _) in enumerate(grid):
        want = {}
        for j, (x2, y2, _) in enumerate(grid):
            box = expected_box((x, y), (x2, y2)) if j != i else None
            if box:  # overlaps are 32 or 64 px wide here: room for the query grid
                want[j] = box
        assert {r.other: r.box for r in found.get(i, [])} == want, (x, y)
    last = len(grid)
    assert last not in found and last + 1 not in found and last + 2 not in found


def test_a_copy_is_found_whole():
    image = scene()[:96, :96]
    found = shared_regions([image, scene(seed=2)[:96, :96], image.copy()])
    assert [(r.other, r.box) for r in found[0]] == [(2, (0, 0, 96, 96))]
    assert [(r.other, r.box) for r in found[2]] == [(0, (0, 0, 96, 96))]
    assert 1 not in found


def test_box_coverage_matches_a_pixel_count():
    rng = np.random.default_rng(0)
    mask = rng.random((50, 60)) < 0.3
    boxes = np.array([[0, 0, 60, 50], [10.0, 5.0, 7.0, 9.0], [55, 45, 20, 20]], dtype=float)
    want = [
        mask[0:50, 0:60].mean(),
        mask[5:14, 10:17].mean(),
        mask[45:50, 55:60].mean(),  # clipped to the image
    ]
    assert box_coverage(boxes, mask) == pytest.approx(want)


@pytest.fixture()
def tiled_coco(tmp_path: Path) -> Path:
    """16 overlapping 64-px tiles of one scene, one box per tile at its centre."""
    folder = tmp_path / "images"
    folder.mkdir()
    images, annotations = [], []
    for i, (x, y, tile) in enumerate(tiles(scene())):
        Image.fromarray(tile).save(folder / f"scene_{x}_{y}.png")
        images.append({"id": i + 1, "file_name": f"scene_{x}_{y}.png", "width": 64, "height": 64})
        annotations.append(
            {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [24, 24, 16, 16]}
        )
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "o"}]}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(doc))
    return path


def test_held_out_tiles_are_neighbours_and_training_copies_are_masked(tiled_coco, tmp_path):
    from tunedet.data.build import build_dataset

    dataset = build_dataset(
        {"type": "coco", "ann_file": str(tiled_coco), "img_dir": str(tiled_coco.parent / "images")}
    )
    shared, note = find_shared_pixels(dataset)
    assert len(shared) == 16 and "share pixels" in note
    origins = [tuple(int(v) for v in Path(r.file).stem.split("_")[1:]) for r in dataset.records]
    masked_share = {}
    for seed in range(4):
        train, held = holdout_split(len(origins), seed, shared=shared)
        assert len(held) == 3 and not set(train) & set(held)
        # a group of neighbours: every held-out tile overlaps another held-out tile
        for i in held:
            assert any(expected_box(origins[i], origins[j]) for j in held if j != i)
        masked = mask_shared_pixels(dataset, train, held, shared, tmp_path / f"m{seed}")
        masked_share[seed] = float(masked.note.split("%")[0].rsplit(" ", 1)[1])
        spec = write_split(dataset, train, tmp_path / f"train{seed}.json", masked)
        doc = json.loads(Path(spec["ann_file"]).read_text())
        kept = {im["file_name"]: im["id"] for im in doc["images"]}
        assert len(kept) == len(train) - len(masked.dropped_images)
        for index, path in masked.paths.items():
            copy = np.asarray(Image.open(path))
            original = np.asarray(Image.open(dataset.records[index].path))
            # the pixels that a held-out tile covers are one flat colour in the copy
            for region in (r for r in shared[index] if r.other in set(held.tolist())):
                x0, y0, x1, y1 = region.box
                assert len(np.unique(copy[y0:y1, x0:x1].reshape(-1, 3), axis=0)) == 1
            assert not np.array_equal(copy, original)
            assert any(name.endswith(path.name) for name in kept)
        boxes_left = {a["id"] for a in doc["annotations"]}
        assert not boxes_left & masked.dropped_annotations
    # scattered tiles would mask more: three tiles that share no pixel with each other
    scattered = np.array([0, 2, 8])  # origins (0, 0), (64, 0), (0, 64)
    assert not any(
        expected_box(origins[i], origins[j]) for i in scattered for j in scattered if i != j
    )
    rest = np.setdiff1d(np.arange(16), scattered)
    worst = mask_shared_pixels(dataset, rest, scattered, shared, tmp_path / "scattered")
    worst_share = float(worst.note.split("%")[0].rsplit(" ", 1)[1])
    assert max(masked_share.values()) < worst_share


def test_images_that_share_nothing_keep_the_random_split(tmp_path):
    assert np.array_equal(holdout_split(30, 5, shared={})[1], holdout_split(30, 5)[1])
