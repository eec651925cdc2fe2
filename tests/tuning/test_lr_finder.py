"""The LR range test: exponential sweep, bias-corrected smoothing, divergence stop, rules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tunedet.analysis.lr_finder import run_lr_finder, smooth_losses, suggest_lr, sweep_lrs
from tunedet.cli.main import main
from tunedet.config.loader import load_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_sweep_is_exponential_from_start_to_end():
    lrs = sweep_lrs(1e-5, 1e-1, 5)
    np.testing.assert_allclose(lrs, [1e-5, 1e-4, 1e-3, 1e-2, 1e-1], rtol=1e-12)
    with pytest.raises(ValueError, match="0 < --start < --end"):
        sweep_lrs(1.0, 0.1, 10)


def test_smoothing_is_the_bias_corrected_exponential_average():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.5, 2.0, size=50)
    beta = 0.9
    smoothed = smooth_losses(losses, beta)
    for i in (0, 7, 49):  # closed form: Σ_j (1-β) β^(i-j) x_j / (1 - β^(i+1))
        weights = (1 - beta) * beta ** np.arange(i, -1, -1)
        assert smoothed[i] == pytest.approx(
            float(weights @ losses[: i + 1]) / (1 - beta ** (i + 1))
        )
    assert smooth_losses(np.full(10, 3.0), beta) == pytest.approx(np.full(10, 3.0))  # no bias


def test_suggestion_rules_on_a_known_curve():
    lrs = sweep_lrs(1e-6, 1.0, 121)
    x = np.log10(lrs)  # -6 .. 0
    # Flat, then a tanh drop centred at 1e-3 (steepest there), minimum near 1e-1, then a rise.
    curve = 2.0 - np.tanh(2.0 * (x + 3.0)) + 0.5 * np.maximum(x + 1.0, 0) ** 2 * 40
    assert suggest_lr(lrs, curve, "steepest") == pytest.approx(1e-3, rel=0.13)
    minimum = lrs[int(np.argmin(curve))]
    assert suggest_lr(lrs, curve, "min/10") == pytest.approx(minimum / 10)
    with pytest.raises(ValueError, match="the smoothed loss never falls"):
        suggest_lr(lrs, np.linspace(1.0, 2.0, len(lrs)), "steepest")  # rises from the start
    with pytest.raises(ValueError, match="unknown rule"):
        suggest_lr(lrs, curve, "valley")


def test_range_test_on_a_tiny_config_gives_a_finite_curve_and_suggestion(tiny_demo):
    cfg = load_config("retinanet/demo", [*tiny_demo, "threads=1"])
    result = run_lr_finder(cfg, start=1e-5, end=1e-2, iters=6, progress=False)
    assert result.stopped == "end" and len(result.lrs) == 6
    assert np.isfinite(result.losses).all() and np.isfinite(result.smoothed).all()
    lr = result.suggestion("min/10")
    assert math.isfinite(lr) and lr == pytest.approx(result.lrs[np.argmin(result.smoothed)] / 10)
    assert 1e-6 <= lr <= 1e-3


def test_huge_end_lr_stops_on_divergence_and_cli_writes_png(tiny_demo, tmp_path: Path, capsys):
    cfg = load_config("retinanet/demo", [*tiny_demo, "threads=1"])
    run_dir = tmp_path / "run"  # the config's run directory is never created or touched
    cfg = load_config("retinanet/demo", [*tiny_demo, "threads=1", f"work_dir={run_dir}"])
    result = run_lr_finder(cfg, start=1e-4, end=1e8, iters=40, progress=False)
    assert result.stopped in ("diverged", "non-finite") and len(result.lrs) < 40
    assert not run_dir.exists()
    out = tmp_path / "lr_finder.png"
    args = ["analyze", "lr-finder", "retinanet/demo", *tiny_demo, "threads=1"]
    assert main([*args, "--start", "1e-4", "--end", "1e8", "--iters", "40", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert "suggested base lr (min/10):" in printed and "stop: " in printed
