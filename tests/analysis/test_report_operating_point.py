"""The report's operating point: P/R/F1 and the confusion matrix at the score with the best
F1 (stated in the page), an F1-vs-score PNG, and one curves.png panel per quantity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunedet.analysis.curves import plot_run_curves, split_series
from tunedet.analysis.report import operating_point
from tunedet.evaluation.pr_metrics import PRCurve, best_f1_threshold, f1_by_score


def curve(scores, hits, npos) -> PRCurve:
    hits = np.asarray(hits, dtype=bool)
    return PRCurve(
        score=np.asarray(scores, dtype=np.float64),
        tp=np.cumsum(hits),
        fp=np.cumsum(~hits),
        npos=npos,
    )


def test_best_f1_threshold_by_hand():
    # scores 0.9 TP, 0.8 TP, 0.7 FP, 0.6 TP, 0.5 FP; 4 GT.
    # F1 = 2TP / (TP + FP + npos): 2/5, 4/6, 4/7, 6/8, 6/9 -> best 0.75 at score 0.6
    c = curve([0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 0, 1, 0], npos=4)
    score, precision, recall, f1 = f1_by_score(c)
    assert f1 == pytest.approx([2 / 5, 4 / 6, 4 / 7, 6 / 8, 6 / 9])
    assert precision == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5])
    assert recall == pytest.approx([1 / 4, 2 / 4, 2 / 4, 3 / 4, 3 / 4])
    assert best_f1_threshold(c) == pytest.approx((0.6, 0.75))


def test_tied_scores_are_one_operating_point_and_no_hit_keeps_the_default():
    c = curve([0.9, 0.5, 0.5], [1, 0, 1], npos=2)  # "score >= 0.5" keeps both 0.5s
    score, _, _, f1 = f1_by_score(c)
    assert list(score) == [0.9, 0.5] and f1 == pytest.approx([2 / 3, 4 / 5])
    assert best_f1_threshold(curve([0.9, 0.4], [0, 0], npos=3), default=0.5) == (0.5, 0.0)
    assert best_f1_threshold(curve([], [], npos=3)) == (0.5, 0.0)


def test_operating_point_of_coco_results():
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x, 10, 20, 20],
             "area": 400, "iscrowd": 0}
            for i, x in enumerate((0, 40))
        ],
        "categories": [{"id": 1, "name": "a"}],
    }  # fmt: skip
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 10, 20, 20], "score": 0.2},
        {"image_id": 1, "category_id": 1, "bbox": [70, 70, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [40, 10, 20, 20], "score": 0.1},
    ]
    point = operating_point(gt, results)
    # thresholds 0.9: F1 0; 0.2: 2*1/(2+2)=0.5; 0.1: 2*2/(3+2)=0.8
    assert point["score_thr"] == pytest.approx(0.1) and point["f1"] == pytest.approx(0.8)


def test_curves_png_has_one_panel_per_quantity_and_skipped_is_not_a_loss(tmp_path: Path):
    rows = [
        {"step": s, "cls": 1.0 / s, "box": 0.5, "loss": 1.0 / s + 0.5, "lr": 0.01, "time": 0.1,
         "skipped": int(s == 3)}
        for s in range(1, 6)
    ]  # fmt: skip
    rows.append({"step": 5, "val/AP": 0.1, "val/AP50": 0.3, "val/AR1": 0.2, "val/APl": -1.0})
    series = split_series(rows)
    assert set(series["loss"]) == {"cls", "box", "loss"}
    assert set(series["other"]) == {"skipped"}
    quiet = split_series([{**r, "skipped": 0} for r in rows[:-1]])
    assert quiet["other"] == {}  # a counter that never counted is not drawn
    import matplotlib.pyplot as plt

    figures = []
    original = plt.subplots

    def spy(*args, **kwargs):
        fig, axes = original(*args, **kwargs)
        figures.append(axes)
        return fig, axes

    plt.subplots = spy
    try:
        out = plot_run_curves(rows, tmp_path / "curves.png")
    finally:
        plt.subplots = original
    assert out is not None and out.stat().st_size > 2000
    titles = [ax.get_title() for ax in figures[0].flat if ax.axison]
    assert titles == [
        "loss (total)", "loss: cls", "loss: box", "learning rate", "skipped",
        "validation AP", "validation AP50", "validation AR1",
    ]  # fmt: skip
    assert all(len(ax.get_lines()) == 1 for ax in figures[0].flat if ax.axison)


def test_train_report_states_the_best_f1_threshold(tmp_path: Path, tiny_demo):
    import contextlib
    import io

    from tunedet.cli.main import main

    run = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "retinanet/demo", *tiny_demo, "--work-dir", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert 'id="score-threshold">Score threshold ' in page
    assert 'src="eval/f1_score.png"' in page and (run / "eval" / "f1_score.png").stat().st_size
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    chosen = metrics["operating_point"]["score_thr"]
    assert metrics["detection"]["score_thr"] == pytest.approx(chosen)
    assert f"Score threshold {chosen:.3f}" in page


def test_the_report_is_written_from_plain_values_without_a_trainer(tmp_path):
    from tunedet.analysis.report import write_report

    out = write_report(tmp_path, {"AP": 0.25}, "retinanet", 12)
    page = out.read_text()
    assert out == tmp_path / "report.html"
    assert "12 iterations of\nretinanet" in page and "0.2500" in page
    assert "Per-class results" not in page and not (tmp_path / "predictions.png").exists()
