"""Instance masks from the datasets to the batch: COCO segmentations (polygons, RLE),
the synthetic shapes' own masks, transforms keeping masks on their boxes, and
`collate_detection` padding them into ``gt_masks``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from tunedet.data import (
    CocoDataset,
    CopyPaste,
    DataError,
    MinIoURandomCrop,
    MixUp,
    Mosaic,
    RandomHorizontalFlip,
    Resize,
    SyntheticShapes,
)
from tunedet.data.bad_input import MALFORMED_ANNOTATION_SKIPPED
from tunedet.data.loader import TransformedDataset, collate_detection
from tunedet.data.masks import compressed_counts, decode_rles, encode_masks
from tunedet.data.mixing import mask_tight_boxes
from tunedet.data.transforms import Compose

WIDTH, HEIGHT = 40, 30  # not square: a transposed mask cannot pass


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """Reference tight boxes by a loop (first / last + 1 nonzero column and row)."""
    out = []
    for m in masks:
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        out.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
    return np.asarray(out, np.float32).reshape(-1, 4)


def fortran_runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts of a binary mask, from the definition: run lengths of
    the column-major pixel sequence, starting with a (possibly empty) run of zeros."""
    flat = np.concatenate([[0], mask.flatten(order="F").astype(np.int64)])
    changes = np.flatnonzero(np.diff(flat)) + 1
    edges = np.concatenate([[1], changes, [len(flat)]])
    return np.diff(edges).tolist()


# --------------------------------------------------------------------------- RLE helpers


def test_compressed_counts_decode_to_the_runs_of_the_mask():
    rng = np.random.default_rng(0)
    for trial in range(20):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if trial % 3 == 0:  # large runs need several 5-bit chunks and negative deltas
            mask[:] = 0
            mask[rng.integers(h) :, rng.integers(w) :] = 1
        counts = coco_mask.encode(np.asfortranarray(mask))["counts"].decode("ascii")
        assert compressed_counts(counts).tolist() == fortran_runs(mask)
        (ours,) = encode_masks(mask[None])
        assert ours["counts"] == counts and ours["size"] == [h, w]
        assert np.array_equal(decode_rles([ours], h, w)[0], mask)


@pytest.mark.parametrize("bad", ["", "0P", "0\x7f", "abc\u00e9"])
def test_compressed_counts_reject_incomplete_or_foreign_strings(bad):
    with pytest.raises(ValueError):
        compressed_counts(bad)


def test_mask_tight_boxes_equal_the_loop_reference():
    rng = np.random.default_rng(1)
    masks = (rng.random((6, 17, 23)) < 0.05).astype(np.uint8)
    masks[:, 3, 4] = 1  # none empty
    np.testing.assert_array_equal(mask_tight_boxes(masks), tight_boxes(masks))


# --------------------------------------------------------------------------- COCO reading


def random_blob(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    x0, y0 = int(rng.integers(0, WIDTH - 10)), int(rng.integers(0, HEIGHT - 10))
    mask[y0 : y0 + 8, x0 : x0 + 9] = rng.random((8, 9)) < 0.7
    mask[y0 + 4, x0 + 4] = 1
    return mask


def bbox_of(mask: np.ndarray) -> list[float]:
    x0, y0, x1, y1 = tight_boxes(mask[None])[0].tolist()
    return [x0, y0, x1 - x0, y1 - y0]


def write_coco(root: Path, extra: list[dict] | None = None) -> tuple[Path, list[dict]]:
    """One 40x30 image with a polygon, a crowd uncompressed RLE, a compressed RLE and a
    (non-crowd) uncompressed RLE; ``extra`` annotations appended."""
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(root / "a.png")
    compressed = coco_mask.encode(np.asfortranarray(random_blob(rng)))
    compressed["counts"] = compressed["counts"].decode("ascii")
    crowd, plain = random_blob(rng), random_blob(rng)
    annotations = [
        {
            "segmentation": [[3.5, 2.0, 15.0, 4.0, 12.0, 14.5, 4.0, 11.0]],
            "bbox": [3.5, 2, 11.5, 12.5],
        },
        {
            "segmentation": {"size": [HEIGHT, WIDTH], "counts": fortran_runs(crowd)},
            "bbox": bbox_of(crowd),
            "iscrowd": 1,
        },
        {"segmentation": compressed, "bbox": bbox_of(coco_mask.decode(compressed))},
        {
            "segmentation": {"size": [HEIGHT, WIDTH], "counts": fortran_runs(plain)},
            "bbox": bbox_of(plain),
        },
        *(extra or []),
    ]
    for k, ann in enumerate(annotations):
        ann.update(id=10 + k, image_id=1, category_id=ann.get("category_id", 3))
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": WIDTH, "height": HEIGHT}],
        "categories": [{"id": 3, "name": "blob"}],
        "annotations": annotations,
    }
    path = root / "ann.json"
    path.write_text(json.dumps(doc))
    return path, annotations


def test_coco_masks_equal_pycocotools_ann_to_mask(tmp_path: Path):
    ann_file, _ = write_coco(tmp_path)
    reference = COCO(str(ann_file))
    expected = {a["id"]: reference.annToMask(a) for a in reference.loadAnns(reference.getAnnIds())}
    ds = CocoDataset(str(ann_file), str(tmp_path), masks=True)
    assert ds.masks and not ds.report
    sample = ds[0]
    # training targets: all but the crowd annotation (id 11), in file order
    train_ids = [10, 12, 13]
    assert sample["masks"].shape == (3, HEIGHT, WIDTH) and sample["masks"].dtype == np.uint8
    for k, ann_id in enumerate(train_ids):
        assert np.array_equal(sample["masks"][k], expected[ann_id]), ann_id
    gt = ds.coco_ground_truth()
    assert len(gt["annotations"]) == 4 and [a["iscrowd"] for a in gt["annotations"]] == [0, 1, 0, 0]
    for ann, ann_id in zip(gt["annotations"], [10, 11, 12, 13], strict=True):
        decoded = coco_mask.decode(dict(ann["segmentation"]))
        assert np.array_equal(decoded, expected[ann_id]), ann_id
        assert ann["area"] == expected[ann_id].sum()
    json.dumps(gt)  # JSON-ready (str counts)


def test_coco_without_masks_is_unchanged(tmp_path: Path):
    ann_file, _ = write_coco(tmp_path)
    ds = CocoDataset(str(ann_file), str(tmp_path))
    assert "masks" not in ds[0]
    assert all("segmentation" not in a for a in ds.coco_ground_truth()["annotations"])


def test_coco_tiles_cut_masks_with_the_tile(tmp_path: Path):
    ann_file, _ = write_coco(tmp_path)
    reference = COCO(str(ann_file))
    full = {a["id"]: reference.annToMask(a) for a in reference.loadAnns(reference.getAnnIds())}
    ds = CocoDataset(str(ann_file), str(tmp_path), masks=True, tile_size=20, min_visible=0.0)
    gt = ds.coco_ground_truth()
    for index in range(len(ds)):
        sample = ds[index]
        x0, y0 = (int(v) for v in sample["file"].split("#")[1].split(","))
        h, w = sample["image"].shape[:2]
        assert sample["masks"].shape == (len(sample["boxes"]), h, w)
        cut = {k: m[y0 : y0 + h, x0 : x0 + w] for k, m in full.items()}
        for mask in sample["masks"]:  # each one is some annotation's mask cut to the tile
            assert any(np.array_equal(mask, c) for c in cut.values())
        for ann in (a for a in gt["annotations"] if a["image_id"] == sample["image_id"]):
            decoded = coco_mask.decode(dict(ann["segmentation"]))
            assert decoded.shape == (h, w)
            assert any(np.array_equal(decoded, c) for c in cut.values())


BAD_SEGMENTATIONS = [
    ([[1.0, 2.0, 3.0, 4.0, 5.0]], "polygon of 5 values"),
    ([], "not a non-empty list of polygons"),
    ({"size": [HEIGHT + 1, WIDTH], "counts": [HEIGHT * WIDTH]}, "differs from the image"),
    ({"size": [HEIGHT, WIDTH], "counts": [5, 7]}, "cover 12 pixels"),
    ({"size": [HEIGHT, WIDTH], "counts": "0P"}, "truncated"),
    ({"size": [HEIGHT, WIDTH], "counts": 17}, "not a list or a string"),
    (None, "no segmentation"),
]


@pytest.mark.parametrize("segmentation, reason", BAD_SEGMENTATIONS)
def test_malformed_segmentation_is_skipped_and_counted(tmp_path: Path, segmentation, reason):
    bad = {"bbox": [1, 1, 5, 5]}
    if segmentation is not None:
        bad["segmentation"] = segmentation
    ann_file, _ = write_coco(tmp_path, extra=[bad])
    ds = CocoDataset(str(ann_file), str(tmp_path), masks=True)
    assert ds.report.counts == {MALFORMED_ANNOTATION_SKIPPED: 1}
    line = ds.report.summary()
    assert len(line.splitlines()) == 1
    assert f"{ann_file} (annotation id 14)" in line and reason in line
    assert len(ds[0]["boxes"]) == 3 == len(ds[0]["masks"])


@pytest.mark.parametrize("segmentation, reason", BAD_SEGMENTATIONS[:3])
def test_malformed_segmentation_in_strict_mode_names_file_and_annotation(
    tmp_path: Path, segmentation, reason
):
    ann_file, _ = write_coco(tmp_path, extra=[{"bbox": [1, 1, 5, 5], "segmentation": segmentation}])
    with pytest.raises(DataError) as err:
        CocoDataset(str(ann_file), str(tmp_path), masks=True, strict=True)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{ann_file} (annotation id 14): ")
    assert MALFORMED_ANNOTATION_SKIPPED in message and reason in message


def test_segmentation_is_not_read_without_masks(tmp_path: Path):
    ann_file, _ = write_coco(tmp_path, extra=[{"bbox": [1, 1, 5, 5], "segmentation": []}])
    assert not CocoDataset(str(ann_file), str(tmp_path)).report


# --------------------------------------------------------------------------- synthetic


def test_synthetic_masks_are_the_shapes_with_their_boxes():
    ds = SyntheticShapes(num_images=24, image_size=64, seed=3, num_classes=5, masks=True)
    gt = ds.coco_ground_truth()
    by_image: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for index in range(len(ds)):
        sample = ds[index]
        masks, boxes = sample["masks"], sample["boxes"]
        assert masks.shape == (len(boxes), 64, 64) and masks.dtype == np.uint8
        assert set(np.unique(masks).tolist()) <= {0, 1}
        if len(boxes):
            assert np.abs(tight_boxes(masks) - boxes).max() <= 1.0
        # the same masks in the COCO ground truth, with the mask area
        anns = by_image.get(index + 1, [])
        decoded = decode_rles([a["segmentation"] for a in anns], 64, 64)
        assert np.array_equal(decoded, masks)
        assert [a["area"] for a in anns] == masks.sum(axis=(1, 2)).tolist()
    assert "masks" not in SyntheticShapes(num_images=2, image_size=64)[0]


def check_masks_on_boxes(sample: dict, tolerance: float) -> tuple[int, int]:
    """Every mask lies in its box (± tolerance), and its tight box is the box when no box
    edge lies on the image border (a crop clips the box there, and what is left of a
    shape may not reach the other edges either); returns (non-empty masks, masks)."""
    masks, boxes = sample["masks"], sample["boxes"]
    height, width = sample["image"].shape[:2]
    assert masks.shape == (len(boxes), height, width) and masks.dtype == np.uint8
    on = masks.any(axis=(1, 2))
    tight, box = tight_boxes(masks[on]), boxes[on]
    assert (tight[:, :2] >= box[:, :2] - tolerance).all()
    assert (tight[:, 2:] <= box[:, 2:] + tolerance).all()
    inner = (np.abs(box - np.array([0, 0, width, height], np.float32)) > 0.5).all(1)
    assert (np.abs(tight - box)[inner] <= tolerance).all(), sample["file"]
    return int(on.sum()), len(on)


@pytest.mark.parametrize(
    "transforms, tolerance",
    [
        # a nearest upscale moves an edge by < 0.5 px (pixel centres); a downscale may also
        # skip a shape's 1-px tip, so the sizes here only enlarge
        ([RandomHorizontalFlip(p=1.0), Resize(size=96)], 0.5),
        ([MinIoURandomCrop(p=1.0, min_ious=(0.1, 0.3)), RandomHorizontalFlip(p=0.5)], 0.0),
        ([Mosaic(size=128, min_size=4.0), Resize(size=160)], 0.5),
        ([MixUp(p=1.0, min_size=4.0)], 0.0),
        ([CopyPaste(p=1.0, max_objects=3, min_visible=0.3, min_size=2.0)], 0.0),
    ],
    ids=["hflip+resize", "crop+hflip", "mosaic+resize", "mixup", "copy_paste"],
)
def test_synthetic_masks_stay_on_their_boxes_through_transforms(transforms, tolerance):
    ds = SyntheticShapes(
        num_images=12, image_size=64, seed=4, min_size=6.0, empty_fraction=0.0, masks=True
    )
    augmented = TransformedDataset(ds, Compose(transforms), seed=5)
    non_empty = total = 0
    for epoch in range(2):
        for index in range(len(ds)):
            on, n = check_masks_on_boxes(augmented[(index, epoch)], tolerance)
            non_empty, total = non_empty + on, total + n
    assert total > 30 and non_empty >= 0.9 * total


# --------------------------------------------------------------------------- collate


def sample_with(h: int, w: int, n: int, seed: int, masks: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    sample = {
        "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "boxes": np.tile(np.array([[1, 1, 4, 4]], np.float32), (n, 1)),
        "labels": np.arange(n, dtype=np.int64),
        "image_id": seed,
        "file": f"{seed}.png",
    }
    if masks:
        sample["masks"] = (rng.random((n, h, w)) < 0.5).astype(np.uint8)
    return sample


def test_collate_pads_masks_like_boxes():
    samples = [sample_with(20, 30, 2, 0), sample_with(35, 17, 3, 1), sample_with(10, 10, 0, 2)]
    batch = collate_detection(samples, size_divisor=16)
    assert batch.images.shape == (3, 3, 48, 32)
    assert batch.gt_masks.shape == (3, 3, 48, 32) and batch.gt_masks.dtype == torch.uint8
    for i, sample in enumerate(samples):
        n, (h, w) = len(sample["labels"]), sample["image"].shape[:2]
        expected = torch.zeros((3, 48, 32), dtype=torch.uint8)
        expected[:n, :h, :w] = torch.from_numpy(sample["masks"])
        assert torch.equal(batch.gt_masks[i], expected)  # zero slots and zero padding
        assert (batch.gt_labels[i, n:] == -1).all()
    moved = batch.to("cpu")
    assert torch.equal(moved.gt_masks, batch.gt_masks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory_and_to_move_masks():
    batch = collate_detection([sample_with(20, 30, 2, 0)])
    assert batch.pin_memory().gt_masks.is_pinned()
    assert batch.to("cuda").gt_masks.device.type == "cuda"


def test_batches_without_masks_have_none():
    batch = collate_detection([sample_with(20, 30, 2, 0, masks=False)])
    assert batch.gt_masks is None and batch.to("cpu").gt_masks is None


def test_collate_rejects_masks_on_some_samples_only_and_misfit_masks():
    with pytest.raises(ValueError, match="1.png: sample without masks"):
        collate_detection([sample_with(20, 30, 2, 0), sample_with(20, 30, 2, 1, masks=False)])
    bad = sample_with(20, 30, 2, 0)
    bad["masks"] = bad["masks"][:, :10]
    with pytest.raises(ValueError, match=r"0.png: masks of shape \(2, 10, 30\)"):
        collate_detection([bad])


def test_synthetic_masks_round_trip_through_written_coco(tmp_path: Path):
    from tunedet.data import write_coco

    synthetic = SyntheticShapes(num_images=4, image_size=48, seed=6, min_size=4.0, masks=True)
    ann_file = write_coco(synthetic, tmp_path)
    read = CocoDataset(str(ann_file), str(tmp_path / "images"), masks=True)
    assert not read.report and len(read) == 4
    for index in range(4):
        a, b = synthetic[index], read[index]
        assert np.array_equal(a["masks"], b["masks"])
        np.testing.assert_allclose(a["boxes"], b["boxes"])
