"""The fingerprint and the rules of ``tunedet fit`` on synthetic fingerprints."""

import math

import numpy as np
import pytest

from tunedet.tuning.fingerprint import Fingerprint, fingerprint_from_coco, guess_overhead
from tunedet.tuning.fit_rules import (
    DetectorGeometry,
    anchors_rule,
    assigner_rule,
    augment_rule,
    batch_rule,
    crop_rule,
    data_rules,
    levels_rule,
    lr_rule,
    round_factor,
    scale_rule,
    schedule_rule,
    tta_rule,
)


def make_fp(
    sizes,
    aspects=None,
    per_image=10,
    image=(400, 400),
    labels=None,
    classes=("a",),
    overhead="auto",
):
    """A fingerprint of boxes of side ``sizes`` (sqrt(w h)) and ``aspects`` (h / w),
    ``per_image`` boxes per image."""
    sizes = np.asarray(sizes, np.float64)
    aspects = np.ones_like(sizes) if aspects is None else np.asarray(aspects, np.float64)
    w, h = sizes / np.sqrt(aspects), sizes * np.sqrt(aspects)
    n_images = math.ceil(len(sizes) / per_image)
    box_image = np.arange(len(sizes)) // per_image
    labels = np.zeros(len(sizes), np.int64) if labels is None else np.asarray(labels)
    fp = Fingerprint(
        classes=list(classes),
        image_wh=np.tile(np.array(image, np.float64), (n_images, 1)),
        box_wh=np.stack([w, h], axis=1),
        box_labels=labels,
        box_image=box_image,
        objects_per_image=np.bincount(box_image, minlength=n_images),
    )
    fp.overhead = guess_overhead(fp, overhead)
    return fp


def test_fingerprint_from_coco_measures_sizes_per_image_and_skips_crowds():
    gt = {
        "images": [
            {"id": 1, "width": 100, "height": 50},
            {"id": 2, "width": 200, "height": 100},
            {"id": 3, "width": 10, "height": 10},
        ],
        "annotations": [
            {"image_id": 1, "bbox": [0, 0, 4, 9], "category_id": 0},
            {"image_id": 1, "bbox": [0, 0, 10, 10], "category_id": 1},
            {"image_id": 2, "bbox": [5, 5, 20, 5], "category_id": 1},
            {"image_id": 2, "bbox": [5, 5, 20, 5], "category_id": 1, "iscrowd": 1},
            {"image_id": 2, "bbox": [5, 5, 0, 5], "category_id": 1},
        ],
        "categories": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}],
    }
    fp = fingerprint_from_coco(gt, ["a", "b"])
    np.testing.assert_allclose(fp.sizes, [6.0, 10.0, 10.0])
    np.testing.assert_array_equal(fp.objects_per_image, [2, 1, 0])
    np.testing.assert_allclose(
        fp.relative_sizes, [6 / math.sqrt(5000), 10 / math.sqrt(5000), 10 / math.sqrt(20000)]
    )
    summary = fp.summary()
    assert summary["per_class"][1]["boxes"] == 2
    assert summary["class_imbalance"] == 2.0
    assert summary["objects_per_image"]["empty_fraction"] == pytest.approx(0.33, abs=0.01)


def test_fingerprint_refuses_a_dataset_without_objects():
    gt = {"images": [{"id": 1, "width": 8, "height": 8}], "annotations": []}
    with pytest.raises(ValueError, match="no annotated object"):
        fingerprint_from_coco(gt, ["a"])


def test_overhead_guess_needs_symmetric_dense_small_objects():
    rng = np.random.default_rng(0)
    aspects = np.exp(rng.normal(0, 0.2, 400))
    crowns = make_fp(rng.uniform(15, 40, 400), aspects, per_image=30)
    assert crowns.overhead.overhead and crowns.overhead.source == "guess"
    assert "objects per image" in crowns.overhead.basis
    people = make_fp(rng.uniform(15, 40, 400), aspects * 2.5, per_image=30)
    assert not people.overhead.overhead
    assert "(a;" in people.overhead.basis  # names the class with a preferred orientation
    few = make_fp(rng.uniform(15, 40, 400), aspects, per_image=2)
    assert not few.overhead.overhead
    large = make_fp(rng.uniform(100, 200, 400), aspects, per_image=30)
    assert not large.overhead.overhead


def test_overhead_flag_wins_over_the_guess():
    fp = make_fp([20] * 50, per_image=2, overhead="yes")
    assert fp.overhead.overhead and fp.overhead.source == "flag"
    with pytest.raises(ValueError, match="yes, no or auto"):
        guess_overhead(fp, "maybe")


def test_round_factor_keeps_native_scale_near_one_and_rounds_to_quarters():
    assert round_factor(1.2) == 1.0
    assert round_factor(0.85) == 1.0
    assert round_factor(2.6) == 2.5
    assert round_factor(100) == 4.0
    assert round_factor(0.4) == 0.4
    assert round_factor(0.001) == 0.125


def test_scale_rule_enlarges_small_objects_to_the_anchor_centre():
    geometry = DetectorGeometry()
    fp = make_fp(np.full(100, 25.0))
    rule = scale_rule(fp, geometry)
    assert rule.knobs["scale"] == 2.5  # 64 / 25 = 2.56
    assert "25 px" in rule.reason and "64" in rule.reason
    assert scale_rule(make_fp(np.full(100, 60.0)), geometry).knobs["scale"] == 1.0
    # larger objects keep their pixels while inside the anchors (32-128 px); beyond the
    # largest anchor they are shrunk to it, not to the centre
    kept = scale_rule(make_fp(np.full(100, 92.0)), geometry)
    assert kept.knobs["scale"] == 1.0 and "discard pixels" in kept.reason
    assert scale_rule(make_fp(np.full(100, 256.0), image=(1000, 1000)), geometry).knobs[
        "scale"
    ] == pytest.approx(0.5)


def test_scale_rule_caps_the_scaled_image_side():
    rule = scale_rule(make_fp(np.full(100, 8.0), image=(1500, 1000)), DetectorGeometry())
    assert rule.knobs["scale"] == pytest.approx(2048 / 1500, abs=1e-3)
    assert "capped" in rule.reason


def test_crop_rule_crops_large_scaled_images_and_keeps_small_ones_whole():
    fp = make_fp(np.full(100, 25.0), image=(400, 400))
    rule = crop_rule(fp, 2.5)
    assert rule.knobs["crop"] == 256
    assert "1000 px" in rule.reason
    assert crop_rule(make_fp(np.full(100, 30.0), image=(128, 128)), 2.0).knobs["crop"] is None
    big = crop_rule(make_fp(np.full(100, 200.0), image=(2000, 2000)), 1.0)
    assert big.knobs["crop"] == 416  # 2 × 200, rounded up to 32


def test_levels_rule_adds_p2_and_p6_only_for_wide_size_spreads():
    geometry = DetectorGeometry()
    narrow = levels_rule(make_fp(np.geomspace(32, 128, 100)), 1.0, geometry)
    assert narrow.knobs["strides"] == [8, 16, 32] and narrow.knobs["num_outs"] == 3
    wide = levels_rule(make_fp(np.geomspace(4, 1000, 100)), 1.0, geometry)
    assert wide.knobs["strides"] == [4, 8, 16, 32, 64]
    assert wide.knobs["out_indices"] == [1, 2, 3, 4] and wide.knobs["num_outs"] == 5
    assert "P2" in wide.reason and "P6" in wide.reason


def test_anchors_rule_fits_a_ratio_to_elongated_boxes_only():
    sizes = np.geomspace(32, 128, 300)
    square = anchors_rule(make_fp(sizes), 1.0, [8, 16, 32], 4.0)
    assert square.knobs["ratios"] == [1.0]
    tall = anchors_rule(make_fp(sizes, np.full(300, 4.0)), 1.0, [8, 16, 32], 4.0)
    assert tall.knobs["ratios"][0] == pytest.approx(4.0, rel=0.05)
    assert "k-means" in tall.reason
    rng = np.random.default_rng(0)
    mixed = anchors_rule(make_fp(sizes, rng.choice([0.2, 1.0, 5.0], 300)), 1.0, [8, 16, 32], 4.0)
    assert len(mixed.knobs["ratios"]) == 3


def test_assigner_rule_states_the_share_without_a_good_anchor():
    rule = assigner_rule(make_fp(np.full(100, 20.0)), 1.0, [8, 16, 32], 4.0, [1.0])
    assert rule.knobs["assigner"]["type"] == "atss"
    assert rule.reason.startswith("100%")  # 20-px boxes: IoU 0.39 with 32-px anchors


def test_augment_rule_turns_and_vertical_flips_only_for_overhead_imagery():
    ground = augment_rule(make_fp(np.full(100, 30.0), overhead="no"), 1.0, 256, 15)
    types = [t["type"] for t in ground.knobs["flips"]]
    assert types == ["hflip"] and ground.knobs["tta_flips"] == ["h"]
    above = augment_rule(make_fp(np.full(100, 30.0), overhead="yes"), 1.0, 256, 15)
    assert [t["type"] for t in above.knobs["flips"]] == ["hflip", "vflip", "rot90"]
    assert above.knobs["tta_flips"] == ["h", "v", "hv"]


def test_augment_rule_allows_mosaic_only_while_halved_objects_stay_large():
    sparse_large = make_fp(np.full(20, 80.0), per_image=2, image=(320, 320))
    assert augment_rule(sparse_large, 1.0, None, 15).knobs["mosaic"]["size"] == 320
    sparse_small = make_fp(np.full(20, 20.0), per_image=2, image=(320, 320))
    assert augment_rule(sparse_small, 1.0, None, 15).knobs["mosaic"] is None
    dense = make_fp(np.full(200, 80.0), per_image=20, image=(320, 320))
    assert augment_rule(dense, 1.0, None, 15).knobs["mosaic"] is None
    mixup = augment_rule(sparse_large, 1.0, None, 90).knobs["flips"]
    assert mixup[-1]["type"] == "mixup"


def test_batch_rule_fills_the_pixels_per_step_and_respects_the_dataset():
    assert batch_rule(256 * 256, "cpu", 1000).knobs["batch_size"] == 8
    assert batch_rule(128 * 128, "cpu", 1000).knobs["batch_size"] == 32
    assert batch_rule(256 * 256, "cuda", 1000).knobs["batch_size"] == 64
    assert batch_rule(2048 * 2048, "cpu", 1000).knobs["batch_size"] == 2
    small = batch_rule(128 * 128, "cpu", 5)
    assert small.knobs["batch_size"] == 4 and "5 training images" in small.reason


def test_lr_rule_bounds_the_finder_suggestion():
    assert lr_rule(0.004, 0.002, "finder").knobs["lr"] == 0.004
    assert lr_rule(1.0, 0.002, "finder").knobs["lr"] == 0.01
    assert lr_rule(1e-6, 0.002, "finder").knobs["lr"] == 0.0002
    assert lr_rule(None, 0.002, "no finder").knobs["lr"] == 0.002


def test_schedule_rule_sizes_the_warmup_to_the_iterations():
    rule = schedule_rule(600, 0.5)
    assert rule.knobs["max_minutes"] == 10 and rule.knobs["warmup_iters"] == 60
    assert "1200 iterations" in rule.reason


def test_tta_rule_keeps_tta_only_when_it_paid():
    assert tta_rule("AP50", 0.40, 0.42, ["h"]).knobs["tta"] == {"flips": ["h"], "merge": "vote"}
    assert tta_rule("AP50", 0.40, 0.401, ["h"]).knobs["tta"] is None


def test_data_rules_on_a_crowns_like_fingerprint_give_the_hand_recipe():
    # crowns-like: ~25 px in 400-px patches, 35 per patch, no preferred orientation
    rng = np.random.default_rng(1)
    sizes = np.exp(rng.normal(math.log(25), 0.3, 800)).clip(8, 107)
    fp = make_fp(sizes, np.exp(rng.normal(0, 0.15, 800)), per_image=35)
    rules = {r.name: r for r in data_rules(fp, DetectorGeometry(), "cpu", 22, 15)}
    assert rules["scale"].knobs["scale"] == 2.5
    assert rules["crop"].knobs["crop"] == 256
    assert fp.overhead.overhead
    assert [t["type"] for t in rules["augment"].knobs["flips"]] == ["hflip", "vflip", "rot90"]
    assert rules["batch"].knobs["batch_size"] == 8
    assert all(r.reason for r in rules.values())
