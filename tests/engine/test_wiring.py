"""The trainer really applies the knobs it is given: each test reads the optimizer's
state at the moment of ``optimizer.step`` and fails when the knob's wiring is removed
(``schedule.scale_momentum``, ``optim.l1``, ``train.grad_clip``); and the console shows
one plain line per log interval, without escape codes, when there is no bar."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from tunedet.config.loader import load_config
from tunedet.engine.progress import bars_enabled, format_duration, progress_line
from tunedet.engine.trainer import Trainer

TINY = [
    "model.backbone.widths=[8, 8, 16, 16, 16]",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "data.train.num_images=8",
    "data.train.image_size=64",
    "data.val=null",
    "data.batch_size=2",
    "train.progress=false",
    "train.ckpt_every=0",
    "threads=1",
]
SGD = "optim={type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0}"


def quiet(*_args, **_kwargs) -> None:
    pass


def run_with_step_spy(tmp_path: Path, *overrides: str) -> tuple[Trainer, list[dict]]:
    """Train 2 iterations; for each ``optimizer.step`` call, the parameters, their gradients
    and momentum buffers as the step sees them (before it changes anything)."""
    cfg = load_config("retinanet/demo", [*TINY, "train.max_iters=2", *overrides])
    trainer = Trainer(cfg, tmp_path, log=quiet)
    optimizer = trainer.optimizer
    step = optimizer.step
    seen: list[dict] = []

    def spy(*args, **kwargs):
        snapshot = {"lr": [g["lr"] for g in optimizer.param_groups], "params": []}
        for group in optimizer.param_groups:
            for p in group["params"]:
                buffer = optimizer.state.get(p, {}).get("momentum_buffer")
                snapshot["params"].append(
                    {
                        "group_l1": group.get("l1", 0.0),
                        "weight": p.detach().clone(),
                        "grad": None if p.grad is None else p.grad.detach().clone(),
                        "buffer": None if buffer is None else buffer.clone(),
                    }
                )
        seen.append(snapshot)
        return step(*args, **kwargs)

    optimizer.step = spy
    trainer.train()
    assert len(seen) == 2
    return trainer, seen


def test_grad_clip_bounds_the_gradient_norm_the_optimizer_steps_with(tmp_path: Path):
    _, clipped = run_with_step_spy(tmp_path / "a", SGD, "train.grad_clip=0.001")
    _, free = run_with_step_spy(tmp_path / "b", SGD)
    for snapshot in clipped:
        grads = [p["grad"] for p in snapshot["params"] if p["grad"] is not None]
        assert float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) <= 0.001001
    raw = [p["grad"].norm() for p in free[0]["params"] if p["grad"] is not None]
    assert float(torch.linalg.vector_norm(torch.stack(raw))) > 0.01  # the clip did act


def test_l1_penalty_adds_l1_sign_w_to_the_weights_gradients_only(tmp_path: Path):
    _, with_l1 = run_with_step_spy(tmp_path / "a", SGD, "optim.l1=0.5")
    _, without = run_with_step_spy(tmp_path / "b", SGD)
    # the first step: same weights, same batch; the gradients differ by exactly l1·sign(w)
    checked = 0
    for a, b in zip(with_l1[0]["params"], without[0]["params"], strict=True):
        if a["grad"] is None:
            continue
        torch.testing.assert_close(a["weight"], b["weight"], rtol=0, atol=0)
        expected = b["grad"] + a["group_l1"] * torch.sign(a["weight"])
        torch.testing.assert_close(a["grad"], expected, rtol=1e-5, atol=1e-6)
        checked += a["group_l1"] > 0
    assert checked > 0  # some parameters are in a group with the penalty


def test_scale_momentum_rescales_the_buffers_by_old_lr_over_new_lr(tmp_path: Path):
    # a linear warmup changes the lr by a small ratio (< 1.1) every iteration: Detectron
    # keeps lr·buffer, so torch's buffer is scaled by old_lr / new_lr before the step
    warmup = (
        "schedule.warmup={type: linear, iters: 100, factor: 0.5}",
        "schedule.policy.type=constant",
    )
    _, scaled = run_with_step_spy(tmp_path / "a", SGD, *warmup, "schedule.scale_momentum=true")
    _, plain = run_with_step_spy(tmp_path / "b", SGD, *warmup)
    old_lr, new_lr = scaled[0]["lr"][0], scaled[1]["lr"][0]
    assert 1.0 < new_lr / old_lr < 1.1
    compared = 0
    for a, b in zip(scaled[1]["params"], plain[1]["params"], strict=True):
        if a["buffer"] is None:
            continue
        torch.testing.assert_close(a["buffer"], b["buffer"] * (old_lr / new_lr))
        compared += bool(b["buffer"].abs().max() > 0)
    assert compared > 0


def test_without_a_bar_each_log_interval_prints_one_plain_line(tmp_path: Path, capsys):
    """``train.progress`` on, but stderr is no terminal (a log file): plain lines for
    training, and no bar from the evaluation either."""
    lines: list[str] = []
    with_val = [o for o in TINY if o not in ("data.val=null", "train.progress=false")]
    cfg = load_config(
        "retinanet/demo",
        [
            *with_val,
            "data.val.num_images=2",
            "data.val.image_size=64",
            "train.progress=true",
            "train.max_iters=4",
            "train.log_every=2",
        ],
    )
    Trainer(cfg, tmp_path, log=lines.append).train()
    progress = [line for line in lines if line.startswith("iter ")]
    assert [line.split()[1] for line in progress] == ["2/4", "4/4"]
    assert all(" loss " in line and " lr " in line and "eta" in line for line in progress)
    # pytest's captured stderr is no terminal: no bar, so no carriage returns or escapes
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err


def test_bars_only_on_a_terminal_with_progress_on():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert bars_enabled(True, Terminal())
    assert not bars_enabled(False, Terminal())
    assert not bars_enabled(True, io.StringIO())  # a log file


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.4, "59s"), (185, "3m05s"), (3720, "1h02m")]
)
def test_format_duration(seconds: float, text: str):
    assert format_duration(seconds) == text


def test_progress_line_states_iteration_losses_lr_and_eta():
    row = {"cls": 0.5, "box": 0.25, "loss": 0.75, "lr": 0.002, "time": 10.0, "skipped": 0}
    line = progress_line(20, 100, row, elapsed=10.0, done_since_start=20)
    assert line == "iter 20/100 (20%) loss 0.75 cls 0.5 box 0.25 lr 0.002 | 10s, eta 40s"
    assert "eta" not in progress_line(20, None, row, elapsed=10.0, done_since_start=20)
