"""RICAP and CutMix against their closed forms: patch sizes from β (λ), pixels copied from
the right place, boxes clipped or trimmed to what stays visible."""

from __future__ import annotations

import numpy as np
import pytest

from tunedet.data import RICAP, CutMix
from tunedet.data.patch_mixing import trim_by_cut


class ScriptedRng:
    """Stands in for ``np.random.Generator``: ``random`` returns 0 (the transform fires),
    ``beta`` and ``integers`` return the scripted values in order."""

    def __init__(self, betas, integers):
        self.betas = list(betas)
        self.ints = list(integers)

    def random(self):
        return 0.0

    def beta(self, a, b, size=None):
        if size is None:
            return self.betas.pop(0)
        return np.array([self.betas.pop(0) for _ in range(size)])

    def integers(self, low, high=None):
        value = self.ints.pop(0)
        low, high = (0, low) if high is None else (low, high)
        assert low <= value < high, (low, value, high)
        return value


def coordinate_image(height, width, tag):
    """Pixel (y, x) holds (x, y, tag): where a pixel came from can be read off it."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(width)[None]
    image[..., 1] = np.arange(height)[:, None]
    image[..., 2] = tag
    return image


def sample_of(image, boxes, labels):
    return {
        "image": image,
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64),
    }


def with_others(sample, others):
    return {**sample, "_fetch": lambda i: dict(others[i]), "_num_samples": len(others)}


def test_ricap_patches_meet_at_the_boundary_point_and_crop_where_drawn():
    s = 40
    first = sample_of(coordinate_image(40, 40, 1), [[0, 0, 10, 10], [30, 30, 40, 40]], [0, 1])
    others = [
        sample_of(coordinate_image(40, 60, 2 + k), [[20, 5, 30, 35]], [2 + k]) for k in range(3)
    ]
    # three fetches, then β₁ = 0.25, β₂ = 0.5 -> w = 10, h = 20, then a crop origin per patch
    rng = ScriptedRng([0.25, 0.5], [0, 1, 2, 0, 0, 5, 3, 20, 10, 30, 0])
    out = RICAP(size=s, min_visible=0.3, min_size=1.0)(with_others(first, others), rng)
    image = out["image"]
    assert image.shape == (40, 40, 3)
    # top-left 10 x 20 from the first image at (0, 0); top-right 30 x 20 from other 0 at (5, 3)
    assert np.array_equal(image[:20, :10], first["image"][:20, :10])
    assert np.array_equal(image[:20, 10:], others[0]["image"][3:23, 5:35])
    # bottom-left 10 x 20 from other 1 at (20, 10); bottom-right 30 x 20 from other 2 at (30, 0)
    assert np.array_equal(image[20:, :10], others[1]["image"][10:30, 20:30])
    assert np.array_equal(image[20:, 10:], others[2]["image"][0:20, 30:60])
    assert out["ricap_weights"] == pytest.approx([200 / 1600, 600 / 1600, 200 / 1600, 600 / 1600])
    # first: box 0 lies inside its patch, box 1 outside; other 0's box [20,5,30,35] clipped to
    # the crop [5,3,35,23] -> [20,5,30,23] (18/30 visible), shifted by (10-5, 0-3);
    # other 1's box, crop [20,10,30,30] -> [20,10,30,30] (20/30), shifted by (0-20, 20-10);
    # other 2's crop [30,0,60,20] misses the box
    np.testing.assert_allclose(out["boxes"], [[0, 0, 10, 10], [25, 2, 35, 20], [0, 20, 10, 40]])
    assert out["labels"].tolist() == [0, 2, 3]


def test_ricap_drops_boxes_with_too_little_left_in_their_patch():
    first = sample_of(coordinate_image(40, 40, 1), [[0, 0, 40, 40]], [0])
    others = [sample_of(coordinate_image(40, 40, 2), [], []) for _ in range(3)]
    rng = ScriptedRng([0.25, 0.5], [0] * 11)  # top-left patch 10 x 20: 1/8 of the box
    kept = RICAP(size=40, min_visible=0.1)(with_others(first, others), rng)
    assert kept["labels"].tolist() == [0]
    rng = ScriptedRng([0.25, 0.5], [0] * 11)
    dropped = RICAP(size=40, min_visible=0.2)(with_others(first, others), rng)
    assert dropped["labels"].tolist() == []


def test_ricap_boundary_follows_beta():
    first = sample_of(coordinate_image(16, 16, 1), [], [])
    t = RICAP(size=16, beta=0.3)  # same size: no resizing, w in steps of 1/16
    ws = []
    for seed in range(1000):
        out = t(with_others(first, [first]), np.random.default_rng(seed))
        ws.append(out["ricap_weights"][0] + out["ricap_weights"][2])  # w / size
    ws = np.array(ws)
    assert ws.mean() == pytest.approx(0.5, abs=0.03)
    assert ws.var() == pytest.approx(1 / (4 * (2 * 0.3 + 1)), abs=0.01)  # Var Beta(a, a)


def test_cutmix_rectangle_has_area_one_minus_lambda_and_copies_the_other_image():
    a = sample_of(coordinate_image(40, 60, 1), [[0, 0, 20, 40], [30, 20, 32, 22]], [0, 1])
    b = sample_of(coordinate_image(20, 30, 2), [[0, 0, 30, 20]], [5])
    # fetch index 0, λ = 0.75 -> cut 30 x 20 centred on (25, 20): [10, 10, 40, 30]
    rng = ScriptedRng([0.75], [0, 25, 20])
    out = CutMix(p=1.0, min_visible=0.2, min_size=1.0)(with_others(a, [b]), rng)
    assert out["cutmix_lambda"] == pytest.approx(1 - 30 * 20 / (60 * 40))
    b_big = np.repeat(np.repeat(b["image"], 2, 0), 2, 1)  # b resized x2 to cover 40 x 60
    changed = (out["image"] != a["image"]).any(-1)
    assert changed[10:30, 10:40].all() and not changed[:10].any() and not changed[30:].any()
    assert np.abs(out["image"][10:30, 10:40, 2].astype(int) - 2).max() == 0
    assert np.abs(out["image"][10:30, 10:40, :2].astype(int) - b_big[10:30, 10:40, :2]).max() <= 1
    # a's first box keeps its left part [0, 0, 20, 40] minus the cut (not one side: kept);
    # the second lies inside the cut (dropped); b's box (x2: [0, 0, 60, 40]) is clipped to
    # the cut, a quarter of it visible
    np.testing.assert_allclose(out["boxes"], [[0, 0, 20, 40], [10, 10, 40, 30]])
    assert out["labels"].tolist() == [0, 5]


def test_cutmix_clipped_at_the_border_records_the_adjusted_lambda():
    a = sample_of(np.zeros((40, 60, 3), np.uint8), [], [])
    b = sample_of(np.full((40, 60, 3), 9, np.uint8), [], [])
    rng = ScriptedRng([0.75], [0, 0, 39])  # centred on (0, 39): [0, 29, 15, 40]
    out = CutMix(p=1.0)(with_others(a, [b]), rng)
    assert (out["image"][..., 0] == 9).sum() == 15 * 11
    assert out["cutmix_lambda"] == pytest.approx(1 - 15 * 11 / 2400)


def test_trim_by_cut_moves_only_fully_covered_sides():
    boxes = np.array(
        [
            [0, 10, 20, 20],  # cut covers its right 10 px over its whole height
            [30, 12, 50, 18],  # covered on its left
            [15, 0, 25, 12],  # covered at the bottom, whole width
            [5, 5, 12, 25],  # corner overlap only (height not spanned): unchanged
            [16, 12, 24, 18],  # inside: nothing visible
        ],
        np.float32,
    )
    trimmed, visible = trim_by_cut(boxes, (10, 8, 40, 22))
    np.testing.assert_allclose(
        trimmed[:4], [[0, 10, 10, 20], [40, 12, 50, 18], [15, 0, 25, 8], [5, 5, 12, 25]]
    )
    np.testing.assert_allclose(visible, [100, 60, 80, 140 - 2 * 14, 0])
