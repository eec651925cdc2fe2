"""The VOC reader on the real trees set (../shared/data/trees), skipped where absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunedet.data import VOCDataset
from tunedet.data.bad_input import IMAGE_FOUND_BY_STEM

TREES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "trees"

pytestmark = pytest.mark.skipif(
    not TREES.is_dir(), reason=f"trees data set not found at {TREES} (see shared/data/trees)"
)


def test_voc_reads_every_tree_box():
    ds = VOCDataset(str(TREES))
    assert ds.classes == ["Alive", "Dead", "Tree"]
    counts = {ds[i]["file"]: len(ds[i]["boxes"]) for i in range(len(ds))}
    assert counts == {
        "2019_YELL_2_541000_4977000_image_crop.png": 279,
        "OSBS_029.png": 61,
        "SOAP_061.png": 37,
    }
    # OSBS_029.xml names OSBS_029.tif; the image is found by its stem and counted.
    assert ds.report.counts == {IMAGE_FOUND_BY_STEM: 1}
    assert "OSBS_029.tif" in ds.report.examples[IMAGE_FOUND_BY_STEM]
    assert ds[1]["image"].shape == (400, 400, 3)


def test_tiled_trees_cover_every_box_and_share_ground_truth_ids():
    ds = VOCDataset(str(TREES), tile_size=400, tile_overlap=0.25, min_visible=0.5)
    assert len(ds) == 16 + 1 + 1  # 1249 x 1035 -> 4 x 4 tiles; 400 x 400 -> 1 tile each
    gt = ds.coco_ground_truth()
    assert [img["id"] for img in gt["images"]] == list(range(1, len(ds) + 1))
    assert all(img["width"] <= 400 and img["height"] <= 400 for img in gt["images"])
    sample = ds[3]
    assert sample["file"] == "2019_YELL_2_541000_4977000_image_crop.png#849,0"
    assert sample["image"].shape == (400, 400, 3)
    assert (sample["boxes"] >= 0).all() and (sample["boxes"] <= 400).all()
    kept = sum(a["ignore"] == 0 for a in gt["annotations"])
    assert kept == sum(len(ds[i]["boxes"]) for i in range(len(ds)))
    assert np.isin(["OSBS_029.png#0,0"], [img["file_name"] for img in gt["images"]]).all()
