"""The analysis tools: their pure functions on small cases, and each ``tunedet analyze NAME``
run on the synthetic data of a tiny model, writing a non-empty PNG."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tunedet.analysis.anchors import (
    analyze_anchors,
    config_fragment,
    drop_extreme_boxes,
    kmeans_wh,
    wh_iou,
)
from tunedet.analysis.assign import positive_anchors
from tunedet.analysis.curves import read_metrics_log, split_series
from tunedet.analysis.errors import find_errors, size_bucket
from tunedet.analysis.flops import count_params_and_flops
from tunedet.analysis.focal import focal_loss_curves
from tunedet.cli.main import main
from tunedet.evaluation import detection_set


def run_cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    return out.getvalue()


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, path


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory, tiny_demo) -> Path:
    """A run folder with the tiny config and an untrained checkpoint (no training needed)."""
    from tunedet.config.loader import config_to_yaml, load_config
    from tunedet.engine.checkpoint import save_checkpoint
    from tunedet.models import build_detector

    run = tmp_path_factory.mktemp("run")
    cfg = load_config("retinanet/demo", tiny_demo)
    (run / "config.yaml").write_text(config_to_yaml(cfg))
    torch.manual_seed(0)
    save_checkpoint(
        run / "model.pt", {"model": build_detector(cfg.model.model_dump()).state_dict()}
    )
    return run


# ---------------------------------------------------------------------- focal


def test_focal_curves_reduce_to_weighted_cross_entropy_at_gamma_zero():
    curves = focal_loss_curves(alphas=[0.25], gammas=[0.0, 2.0], num_points=101)
    p_t = curves["p_t"]
    # gamma 0: FL = alpha * -log(p_t); d/dx = alpha * (p_t - 1) for a positive
    np.testing.assert_allclose(curves["loss"][0, 0], -0.25 * np.log(p_t), rtol=1e-9)
    np.testing.assert_allclose(curves["grad"][0, 0], 0.25 * (p_t - 1), rtol=1e-9, atol=1e-15)
    # gamma 2 multiplies by (1 - p_t)^2: an easy example (p_t = 0.999) loses ~1e-6 of its loss
    np.testing.assert_allclose(curves["loss"][0, 1], curves["loss"][0, 0] * (1 - p_t) ** 2)
    assert curves["loss"][0, 1][-1] / curves["loss"][0, 0][-1] < 2e-6


def test_analyze_focal_writes_png(tmp_path: Path):
    out = tmp_path / "focal.png"
    text = run_cli("analyze", "focal", "--alphas", "0.25", "--gammas", "0", "2", "--out", str(out))
    assert "easy(0.9)/CE" in text
    assert_png(out)


# --------------------------------------------------------------------- curves


def test_curves_reads_nan_strings_and_splits_series(tmp_path: Path):
    log = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "cls": 1.0, "box": 0.5, "loss": 1.5, "lr": 0.01, "time": 0.1},
        {"step": 2, "cls": "nan", "box": 0.4, "loss": "nan", "lr": 0.02, "time": 0.2},
        {"step": 2, "val/AP": 0.1, "val/AP50": 0.3, "val/ARl": -1.0},
    ]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    read = read_metrics_log(log)
    assert np.isnan(read[1]["cls"])
    series = split_series(read)
    assert set(series["loss"]) == {"cls", "box", "loss"}
    assert series["lr"]["lr"] == ([1, 2], [0.01, 0.02])
    assert list(series["val"])[:2] == ["AP", "AP50"]
    out = tmp_path / "curves.png"
    run_cli("analyze", "curves", str(tmp_path), "--out", str(out))
    assert_png(out)


# -------------------------------------------------------------------- anchors


def test_wh_iou_of_centred_boxes_by_hand():
    # 10x10 vs 20x5: intersection 10 * 5 = 50, union 100 + 100 - 50 = 150
    assert wh_iou(np.array([[10.0, 10.0]]), np.array([[20.0, 5.0]]))[0, 0] == pytest.approx(1 / 3)


def test_kmeans_recovers_two_box_shapes_and_drops_extremes():
    rng = np.random.default_rng(0)
    small = rng.normal([10, 20], 0.5, size=(200, 2))
    large = rng.normal([60, 30], 1.0, size=(200, 2))
    outliers = np.array([[1.0, 1.0], [500.0, 2.0]])
    wh = np.concatenate([small, large, outliers])
    keep = drop_extreme_boxes(wh, trim=0.01)
    assert not keep[-2:].any() and keep[:400].mean() > 0.95
    centres = kmeans_wh(wh[keep], k=2)
    np.testing.assert_allclose(centres, [[10, 20], [60, 30]], atol=1.0)


def test_analyze_anchors_proposal_beats_misfit_anchors_and_fragment_loads(tmp_path: Path):
    from tunedet.anchors.grid import GridAnchorGenerator
    from tunedet.config.loader import load_config
    from tunedet.models import build_detector

    rng = np.random.default_rng(1)
    wh = np.exp(rng.normal(np.log(12), 0.3, size=(300, 1))) * rng.uniform(0.8, 1.25, (300, 2))
    generator = GridAnchorGenerator(strides=(8, 16, 32), scales_per_octave=1, ratios=(1.0,))
    report = analyze_anchors(wh, generator)
    # the config's anchors (32, 64, 128 px) are far too large for ~12 px boxes
    assert report["proposed"]["recall"] > report["current"]["recall"] + 0.3
    assert report["proposed"]["mean_best_iou"] > report["current"]["mean_best_iou"]
    assert len(report["proposed"]["base_sizes"]) == 3
    fragment = tmp_path / "proposed.yaml"
    base = Path(__file__).resolve().parents[2] / "src/tunedet/configs/retinanet/demo.yaml"
    fragment.write_text(f"_base_: {base}\n" + config_fragment(report, "demo"))
    cfg = load_config(fragment)
    model = build_detector(cfg.model.model_dump())
    assert model.anchor_generator.base_sizes == tuple(report["proposed"]["base_sizes"])


def test_analyze_anchors_writes_png_and_fragment(tmp_path: Path, tiny_demo):
    text = run_cli("analyze", "anchors", "retinanet/demo", *tiny_demo, "--out", str(tmp_path))
    assert "proposed" in text
    assert_png(tmp_path / "anchors.png")
    assert "base_sizes" in (tmp_path / "anchors.yaml").read_text()


def test_analyze_anchors_of_a_two_stage_detector_fits_its_rpn_anchors(tmp_path: Path):
    from tunedet.config.loader import load_config
    from tunedet.models import build_detector

    small = ["data.train.num_images=16", "data.train.image_size=64", "threads=1"]
    text = run_cli("analyze", "anchors", "faster_rcnn/demo", *small, "--out", str(tmp_path))
    assert "proposed" in text
    fragment = (tmp_path / "anchors.yaml").read_text()
    base = Path(__file__).resolve().parents[2] / "src/tunedet/configs/faster_rcnn/demo.yaml"
    (tmp_path / "fitted.yaml").write_text(f"_base_: {base}\n" + fragment)
    cfg = load_config(tmp_path / "fitted.yaml")
    proposed = cfg.model.rpn.anchor_generator.base_sizes
    assert proposed is not None and len(proposed) == 5  # one per RPN level, under model.rpn
    assert build_detector(cfg.model).rpn.anchor_generator.base_sizes == tuple(proposed)


# --------------------------------------------------------------------- assign


def test_positive_anchors_count_each_gt_per_level(tiny_demo):
    from tunedet.config.loader import load_config
    from tunedet.models import build_detector

    cfg = load_config("retinanet/demo", tiny_demo)
    model = build_detector(cfg.model.model_dump()).eval()
    images = torch.zeros(2, 3, 64, 64)
    gt_boxes = torch.tensor(
        [[[8.0, 8.0, 40.0, 40.0], [0, 0, 0, 0]], [[4, 4, 20, 20], [30, 30, 60, 62]]]
    )
    gt_labels = torch.tensor([[0, -1], [1, 2]])
    out = positive_anchors(model, images, gt_boxes, gt_labels)
    assert [p["per_gt_level"].shape for p in out] == [(1, 3), (2, 3)]
    for p in out:
        assert p["per_gt_level"].sum() == len(p["anchors"]) == len(p["level"])
        assert (p["per_gt_level"].sum(axis=1) > 0).all()  # ATSS gives every GT a positive here


def test_analyze_assign_writes_png(tmp_path: Path, tiny_demo):
    out = tmp_path / "assign.png"
    text = run_cli(
        "analyze", "assign", "retinanet/demo", *tiny_demo, "--num-images", "2", "--out", str(out)
    )
    assert "positives per GT" in text
    assert_png(out)


# ---------------------------------------------------------------------- flops


class OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)

    def predict(self, images, image_sizes):
        return [self.conv(images)]


def test_flops_of_one_conv_are_two_per_multiply_accumulate():
    rows = count_params_and_flops(OneConv(), torch.zeros(1, 3, 16, 16), torch.tensor([[16, 16]]))
    by_name = {r["module"]: r for r in rows}
    macs = 8 * 16 * 16 * 3 * 3 * 3  # output elements x (C_in x k x k)
    assert by_name[""]["flops"] == by_name["conv"]["flops"] == 2 * macs
    assert by_name["conv"]["params"] == 8 * 3 * 3 * 3


def test_analyze_flops_writes_png(tmp_path: Path, tiny_demo):
    out = tmp_path / "flops.png"
    text = run_cli("analyze", "flops", "retinanet/demo", *tiny_demo, "--out", str(out))
    assert "head.cls_tower" in text and "(total)" in text
    assert_png(out)


# --------------------------------------------------------------------- errors


def test_find_errors_counts_misses_and_typed_false_positives_by_size():
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},  # small, found
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 50]},  # medium
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [300, 0, 100, 100]},  # large, missed
        ],
    }
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # TP
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.8},  # duplicate
        {"image_id": 1, "category_id": 2, "bbox": [100, 100, 50, 50], "score": 0.7},  # wrong class
        {"image_id": 1, "category_id": 1, "bbox": [300, 0, 100, 25], "score": 0.6},  # background
        {"image_id": 1, "category_id": 2, "bbox": [300, 0, 100, 30], "score": 0.6},  # localisation
        {"image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 50], "score": 0.3},  # below thr
    ]
    errors = find_errors(detection_set(gt, dets), score_thr=0.5)
    counts = errors["counts"]
    # GT 2 is matched only by the 0.3 detection, GT 3 by nothing: both missed
    assert counts["missed"] == {"small": 0, "medium": 1, "large": 1, "total": 2}
    assert errors["fp_type"] == ["duplicate", "wrong class", "background", "localisation"]
    # FP areas: 90 small, 2500 medium, 2500 and 3000 medium
    assert counts["false_positives"]["small"] == 1 and counts["false_positives"]["medium"] == 3
    np.testing.assert_array_equal(
        size_bucket(np.array([[0, 0, 31, 33], [0, 0, 32, 32], [0, 0, 96, 96.1]])), [0, 1, 2]
    )


def test_analyze_errors_writes_png_and_exports_false_positives(
    checkpoint_run: Path, tmp_path: Path
):
    checkpoint = checkpoint_run / "model.pt"
    config = str(checkpoint_run / "config.yaml")
    export = tmp_path / "negatives"
    # an untrained model scores ~0.01 (prior): keep its 5 best boxes per image, all "confident"
    overrides = ["model.score_thr=0.0", "model.max_dets=5"]
    args = ["analyze", "errors", config, *overrides, "--checkpoint", str(checkpoint)]
    args += ["--score-thr", "0.0"]
    text = run_cli(*args, "--out", str(tmp_path), "--export-fp", str(export))
    assert "missed GT" in text
    assert_png(tmp_path / "errors.png")
    counts = json.loads((tmp_path / "errors.json").read_text())
    manifest = json.loads((export / "false_positives.json").read_text())
    assert counts["false_positives"]["total"] >= len(manifest) > 0
    assert (export / manifest[0]["crop"]).is_file()


def test_overlay_masks_blends_exactly_the_masked_pixels_in_the_label_colour():
    from PIL import Image

    from tunedet.analysis.draw import PALETTE, overlay_masks

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    masks = rng.random((2, 20, 30)) > 0.7
    masks[1] &= ~masks[0]  # disjoint, so each masked pixel is blended once
    out = np.asarray(overlay_masks(Image.fromarray(pixels), masks, [0, 3], alpha=0.5))
    untouched = ~(masks[0] | masks[1])
    assert np.array_equal(out[untouched], pixels[untouched])
    for mask, label in zip(masks, [0, 3], strict=True):
        expected = 0.5 * pixels[mask].astype(np.float32) + 0.5 * np.asarray(PALETTE[label])
        assert np.abs(out[mask].astype(np.float32) - expected).max() <= 0.5


def test_metrics_log_reader_leaves_out_a_torn_last_line_and_names_a_bad_one(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    assert read_metrics_log(log) == [{"step": 1, "loss": 0.5}]
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON row"):
        read_metrics_log(log)
