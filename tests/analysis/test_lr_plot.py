"""``tunedet analyze lr``: a PNG of the config's schedule, warmup zoom, momentum when cycled."""

from pathlib import Path

import pytest

from tunedet.analysis.lr_plot import base_lr, plot_lr_schedule, run_length, schedule_iterations
from tunedet.cli.main import main
from tunedet.config.loader import load_config
from tunedet.engine.lr_schedule import build_lr_schedule

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_analyze_lr_writes_a_png_of_the_config_schedule(tmp_path: Path, capsys):
    out = tmp_path / "lr.png"
    assert main(["analyze", "lr", "retinanet/demo", "train.max_iters=300", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert "2e-06 at 0" in printed and "at 300" in printed  # 0.002 · warmup factor 0.001


def test_plot_summary_reports_warmup_and_cycled_momentum(tmp_path: Path):
    schedule = build_lr_schedule(
        0.1,
        {"type": "onecycle"},
        {"type": "gradual", "iters": 10, "multiplier": 2.0},
        max_iters=110,
    )
    summary = plot_lr_schedule(schedule, 110, tmp_path / "onecycle.png")
    assert summary["momentum_varies"] is True
    assert summary["lr_start"] == pytest.approx(0.1 / 25)  # gradual warmup starts at base
    assert summary["lr_after_warmup"] == pytest.approx(0.2 / 25)
    flat = plot_lr_schedule(
        build_lr_schedule(0.1, {"type": "constant"}, None, 50), 50, tmp_path / "flat.png"
    )
    assert flat["momentum_varies"] is False and flat["lr_min"] == flat["lr_max"] == 0.1


def test_run_length_and_scaled_base_lr_follow_the_trainer():
    cfg = load_config(
        "retinanet/demo",
        ["train.max_iters=null", "train.epochs=2", "data.train.num_images=40", "data.batch_size=4"]
        + ["train.accumulate=2", "optim.auto_scale_lr=true", "optim.base_batch=4"],
    )
    assert run_length(cfg) == 2 * 10 // 2
    assert run_length(cfg, 7) == 7
    assert base_lr(cfg) == pytest.approx(0.002 * 8 / 4)
    # data.batch_size is per process: 3 processes see three times the batch
    assert base_lr(cfg, world_size=3) == pytest.approx(0.002 * 24 / 4)
    assert run_length(cfg, world_size=2) == 2 * (40 // 8) // 2


def test_time_budget_config_needs_max_iters():
    cfg = load_config("retinanet/demo", ["train.max_iters=null", "train.max_minutes=5"])
    with pytest.raises(ValueError, match="--max-iters"):
        run_length(cfg)


def test_long_runs_are_subsampled_with_both_ends():
    its = schedule_iterations(1_000_000)
    assert its[0] == 0 and its[-1] == 1_000_000 and len(its) <= 200_000
