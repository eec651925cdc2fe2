"""``tunedet tune``: real tiny trainings as trials, shared SQLite / PostgreSQL studies,
re-runs that continue the study."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from tunedet.cli.main import main
from tunedet.config.loader import load_config
from tunedet.tuning.study import open_storage

SPACE = """\
metric: AP50
params:
  optim.lr: {float: [1.0e-4, 1.0e-2], log: true}
  model.assigner.topk: {int: [3, 9]}
"""
POSTGRES_ENV = "TUNEDET_TEST_POSTGRES_URL"


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def _trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials()


def test_tune_trains_trials_reports_evaluations_and_a_rerun_continues(
    tmp_path: Path, space: Path, tiny_demo, capsys
):
    out = tmp_path / "tune"
    args = ["tune", "retinanet/demo", str(space), *tiny_demo, "threads=1", "train.eval_every=1"]
    args += ["--out", str(out), "--seed", "0"]
    assert main([*args, "--trials", "1"]) == 0
    assert main([*args, "--trials", "2"]) == 0  # the interrupted / re-run case
    printed = capsys.readouterr().out
    assert "continuing study 'demo' (1 trials so far)" in printed
    storage = f"sqlite:///{out / 'study.db'}"
    trials = _trials(storage, "demo")
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # Both re-runs sampled (seed offset by the trials already there): different picks.
    assert trials[0].params != trials[1].params
    for t in trials:
        # The per-evaluation metric went to Optuna (the pruner's input) at iterations 1, 2,
        # and the trial's value is the final evaluation's AP50.
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.value == t.intermediate_values[2] == t.user_attrs["metrics"]["AP50"]
        run_cfg = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())
        assert run_cfg["optim"]["lr"] == pytest.approx(t.params["optim.lr"])
        assert run_cfg["model"]["assigner"]["topk"] == t.params["model.assigner.topk"]
    table = (out / "results.md").read_text()
    assert table.count("| complete |") == 2 and "optim.lr" in table
    best = load_config(out / "best_config.yaml")  # a full config that loads alone
    study = optuna.load_study(study_name="demo", storage=open_storage(storage))
    assert best.optim.lr == pytest.approx(study.best_trial.params["optim.lr"])
    assert best.data.train.image_size == 64  # the fixed overrides are in it too


def _two_workers(tmp_path: Path, space: Path, tiny_demo, storage: str, study: str) -> None:
    """Start two ``tunedet tune`` processes on one study at once; check every trial is
    recorded once, by exactly one worker, and that the workers ran trials concurrently.

    Trials last a few seconds (150 iterations), so the workers' start-up stagger (a
    fraction of a second here, more on a loaded machine) cannot let one worker finish
    the study alone. The storage's tables are created first, as a long-lived shared
    database would have them; the two workers still race to create the study itself."""
    open_storage(storage)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tunedet.cli.main", "tune", "retinanet/demo", str(space)]
    cmd += [*tiny_demo, "threads=1", "train.max_iters=150", "--trials", "4", "--workers", "1"]
    cmd += ["--storage", storage, "--study", study]
    cmd += ["--out", str(tmp_path / "shared"), "--sampler", "random"]
    workers = [
        subprocess.Popen(
            [*cmd, "--seed", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for w, text in zip(workers, outputs, strict=True):
        assert w.returncode == 0, text
    ran = [
        set(map(int, re.findall(r"^trial \S+ \(#(\d+)\): AP50=", text, re.M))) for text in outputs
    ]
    trials = _trials(storage, study)
    numbers = [t.number for t in trials]
    assert len(numbers) >= 4 and sorted(numbers) == list(range(len(numbers)))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert not ran[0] & ran[1]  # no trial ran twice
    assert ran[0] | ran[1] == set(numbers)  # every recorded trial was run by one worker
    run_dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(run_dirs)) == len(run_dirs)
    assert all((Path(d) / "metrics.json").is_file() for d in run_dirs)
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    shown = [(f"{a:%H:%M:%S.%f}", f"{b:%H:%M:%S.%f}") for a, b in spans]
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), f"no overlap: {shown}"


def test_two_workers_share_one_sqlite_study(tmp_path: Path, space: Path, tiny_demo):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    _two_workers(tmp_path, space, tiny_demo, storage, "shared")


def _postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set (.ci/run starts a local PostgreSQL and sets it)")
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(url).connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
    except Exception as error:  # driver missing, server down, bad credentials
        pytest.skip(f"PostgreSQL at {POSTGRES_ENV} is unreachable: {str(error).splitlines()[0]}")
    return url


def test_two_workers_share_one_postgres_study(tmp_path: Path, space: Path, tiny_demo):
    url = _postgres_url()
    study = f"test_{uuid.uuid4().hex[:12]}"
    try:
        _two_workers(tmp_path, space, tiny_demo, url, study)
    finally:
        optuna.delete_study(study_name=study, storage=open_storage(url))


def test_bad_storage_url_is_one_line_error(tmp_path: Path, space: Path, tiny_demo, capsys):
    args = ["tune", "retinanet/demo", str(space), *tiny_demo, "--trials", "1"]
    code = main([*args, "--storage", "nosuchdb://x", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(
        "tunedet tune: error: cannot open study storage nosuchdb://x"
    )
    assert main(["tune", "retinanet/demo", str(space), "--out", str(tmp_path)]) == 2
    assert "give a budget" in capsys.readouterr().err
