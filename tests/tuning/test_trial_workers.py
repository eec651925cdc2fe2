"""Trials side by side: the layout rule, worker processes whose errors and interrupts
surface as one line, and a 2-worker ``tunedet tune`` study on tiny data."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tunedet.tuning import trial_workers
from tunedet.tuning.study import open_storage
from tunedet.tuning.trial_workers import WorkersInterrupted, choose_layout, run_workers


@pytest.mark.parametrize(
    ("trial_threads", "flags", "config_threads", "left", "expected"),
    [
        (1, (None, None), None, None, (4, 1)),  # the default fills the cores one-thread wide
        (2, (None, None), None, None, (2, 2)),
        (1, (None, None), None, 2, (2, 2)),  # two trials left: two workers, widened
        (1, (None, None), None, 1, (1, 4)),  # the last trial gets every core
        (1, (None, None), 2, None, (2, 2)),  # the config's threads set the width
        (1, (3, None), None, None, (3, 1)),  # --workers alone: the cores shared out
        (1, (None, 3), None, None, (1, 3)),  # --threads alone
        (1, (2, 3), None, 1, (1, 3)),  # never more workers than trials left
    ],
)
def test_choose_layout_fills_the_cores_at_the_default_width(
    monkeypatch, trial_threads, flags, config_threads, left, expected
):
    monkeypatch.setattr(trial_workers, "TRIAL_THREADS", trial_threads)
    layout = choose_layout(*flags, config_threads, "cpu", left, cores=4)
    assert (layout.workers, layout.threads) == expected


def test_choose_layout_runs_one_trial_at_a_time_on_a_gpu():
    assert choose_layout(None, None, None, "cuda", 8, cores=16).workers == 1
    assert choose_layout(2, None, None, "cuda", 8, cores=16).workers == 2
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        choose_layout(0, None, None, "cpu", 8, cores=4)


def _fail_or_wait(job: tuple[int, str]) -> None:
    """Worker 2 fails at once; worker 1 would sleep two minutes, then leave a file
    (module level: spawned)."""
    index, finished = job
    if index == 1:
        raise ValueError("bad space key\nsecond line")
    time.sleep(120)
    Path(finished).write_text("not stopped")


def _signal_parent_or_wait(job: tuple[int, str]) -> None:
    index, finished = job
    if index == 0:
        os.kill(os.getppid(), signal.SIGTERM)
        return
    time.sleep(120)
    Path(finished).write_text("not stopped")


def _report_threads(path: str) -> None:
    import torch

    Path(path).write_text(str(torch.get_num_threads()))


def test_a_failing_worker_stops_the_others_and_raises_one_line(tmp_path: Path):
    finished = str(tmp_path / "finished")
    with pytest.raises(ValueError) as caught:
        run_workers(_fail_or_wait, [(0, finished), (1, finished)], threads=1)
    assert str(caught.value) == "trial worker 2 of 2: bad space key"
    assert not Path(finished).exists()  # worker 1 was stopped, not waited for


def test_sigterm_to_the_parent_stops_every_worker(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(trial_workers, "STOP_GRACE_S", 0.5)
    finished = str(tmp_path / "finished")
    with pytest.raises(WorkersInterrupted) as caught:
        run_workers(_signal_parent_or_wait, [(0, finished), (1, finished)], threads=1)
    assert caught.value.exit_code == 128 + signal.SIGTERM
    assert not Path(finished).exists()
    assert signal.getsignal(signal.SIGTERM) is not trial_workers._raise_interrupt  # restored


def test_each_worker_runs_with_its_thread_count(tmp_path: Path):
    paths = [str(tmp_path / f"w{i}") for i in range(2)]
    run_workers(_report_threads, paths, threads=3)  # 3: unlike any default here
    assert [Path(p).read_text() for p in paths] == ["3", "3"]


def test_two_worker_study_records_every_trial_with_its_threads(tmp_path: Path, tiny_demo):
    space = tmp_path / "space.yaml"
    space.write_text("metric: AP50\nparams:\n  optim.lr: {float: [1.0e-4, 1.0e-2], log: true}\n")
    out = tmp_path / "tune"
    command = [sys.executable, "-m", "tunedet.cli.main", "tune", "retinanet/demo", str(space)]
    command += [*tiny_demo, "--trials", "3", "--workers", "2", "--threads", "3"]
    command += ["--seed", "0", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "layout: 2 trial process(es) × 3 thread(s) (--threads" in done.stdout
    study = optuna.load_study(study_name="demo", storage=open_storage(f"sqlite:///{out}/study.db"))
    trials = study.get_trials()
    # a race of two finishing workers may start one trial beyond --trials, never more
    assert 3 <= len(trials) <= 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["threads"] for t in trials} == {3}
    assert {t.user_attrs["worker"] for t in trials} <= {0, 1}
    assert all((Path(t.user_attrs["run_dir"]) / "metrics.json").is_file() for t in trials)
    started = re.findall(r"^trial (\d+)/3 \(#(\d+)\) started", done.stdout, re.M)
    assert len({k for k, _ in started}) == len(started) == len(trials)  # k/N never repeats
    assert (out / "best_config.yaml").is_file() and "| complete |" in done.stdout
