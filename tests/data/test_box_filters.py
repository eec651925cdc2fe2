"""MinBoxArea: the area rule (Detectron's GT_MIN_AREA) with labels and masks kept aligned."""

from __future__ import annotations

import numpy as np

from tunedet.data import MinBoxArea


def test_min_box_area_drops_boxes_below_the_area_with_their_labels():
    sample = {
        "image": np.zeros((20, 20, 3), np.uint8),
        "boxes": np.array([[0, 0, 5, 6], [0, 0, 5, 5.9], [1, 1, 19, 2]], np.float32),
        "labels": np.array([0, 1, 2]),
    }  # areas 30, 29.5, 18
    sample["masks"] = np.stack([np.full((20, 20), k + 1, np.uint8) for k in range(3)])
    out = MinBoxArea(min_area=30)(sample, np.random.default_rng(0))
    assert out["labels"].tolist() == [0]
    assert out["masks"].shape == (1, 20, 20) and (out["masks"] == 1).all()
