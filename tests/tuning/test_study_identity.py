"""A study keeps its config, fixed overrides and search space: re-runs with other ones are
refused in one line (or start a new study with --new-study); best_config.yaml retrains to the
best trial's metric; a metric no training reports and a foreign SQLite file fail before any
trial; each trial prints k/N and an ETA."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
from pathlib import Path

import optuna
import pytest

from tunedet.cli.main import main
from tunedet.tuning.study import open_storage

SPACE = """\
metric: AP50
params:
  optim.lr: {float: [1.0e-3, 3.0e-2], log: true}
"""
OTHER_SPACE = """\
metric: AP50
params:
  optim.lr: {float: [1.0e-4, 1.0e-2], log: true}
"""


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_demo) -> dict:
    """Two finished trials of a tiny RetinaNet (random sampler, seed 0, no pruning)."""
    root = tmp_path_factory.mktemp("tune")
    space = root / "space.yaml"
    space.write_text(SPACE)
    fixed = [*tiny_demo, "threads=1"]
    out = root / "demo"
    args = ["tune", "retinanet/demo", str(space), *fixed, "--out", str(out)]
    args += ["--sampler", "random", "--pruner", "none", "--seed", "0", "--workers", "1"]
    code, printed, err = run([*args, "--trials", "2"])
    assert code == 0, err
    return {
        "root": root,
        "space": space,
        "fixed": fixed,
        "out": out,
        "args": args,
        "printed": printed,
    }


def test_each_trial_shows_k_of_n_and_an_eta(study):
    lines = study["printed"].splitlines()
    assert any(line.startswith("trial 1/2 (#0) started: optim.lr=") for line in lines)
    second = next(line for line in lines if line.startswith("trial 2/2 (#1) started"))
    assert "ETA" in second and "for 1 trial(s)" in second
    assert any(line.startswith("trial 2/2 (#1): AP50=") for line in lines)


def test_study_stores_its_space_and_fixed_overrides(study):
    storage = open_storage(f"sqlite:///{study['out'] / 'study.db'}")
    attrs = optuna.load_study(study_name="demo", storage=storage).user_attrs["tunedet"]
    assert attrs["config"] == "retinanet/demo"
    assert attrs["fixed_overrides"] == study["fixed"]
    assert attrs["space"]["metric"] == "AP50"
    assert [p["key"] for p in attrs["space"]["params"]] == ["optim.lr"]
    assert attrs["space"]["params"][0]["low"] == pytest.approx(1e-3)


def test_best_config_retrains_to_the_best_trials_metric(study, tmp_path: Path):
    storage = open_storage(f"sqlite:///{study['out'] / 'study.db'}")
    best = optuna.load_study(study_name="demo", storage=storage).best_trial
    code, _, err = run(
        ["train", str(study["out"] / "best_config.yaml"), "--work-dir", str(tmp_path / "re")]
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "re" / "metrics.json").read_text())
    assert metrics["AP50"] == pytest.approx(best.value, abs=1e-9)


def test_rerun_with_another_space_or_fixed_overrides_is_refused_in_one_line(study):
    other = study["root"] / "other.yaml"
    other.write_text(OTHER_SPACE)
    args = ["tune", "retinanet/demo", str(other), *study["fixed"], "--out", str(study["out"])]
    code, _, err = run([*args, "--trials", "3"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "was run with another search space (optim.lr)" in err and "--new-study" in err
    changed = [*study["fixed"], "optim.weight_decay=0.01"]
    args = ["tune", "retinanet/demo", str(study["space"]), *changed, "--out", str(study["out"])]
    code, _, err = run([*args, "--trials", "3"])
    assert code == 2 and "fixed overrides" in err and "optim.weight_decay=0.01" in err
    trials = optuna.load_study(
        study_name="demo", storage=open_storage(f"sqlite:///{study['out'] / 'study.db'}")
    ).get_trials()
    assert len(trials) == 2  # nothing was added to the study


def test_new_study_starts_beside_the_old_one(study):
    other = study["root"] / "other.yaml"
    other.write_text(OTHER_SPACE)
    args = ["tune", "retinanet/demo", str(other), *study["fixed"], "--out", str(study["out"])]
    code, printed, err = run([*args, "--trials", "1", "--new-study", "--pruner", "none"])
    assert code == 0, err
    new_out = study["root"] / "demo-2"
    assert f"new study 'demo-2' in {new_out}" in printed
    storage = open_storage(f"sqlite:///{new_out / 'study.db'}")
    new = optuna.load_study(study_name="demo-2", storage=storage)
    assert len(new.get_trials()) == 1
    assert new.user_attrs["tunedet"]["space"]["params"][0]["low"] == pytest.approx(1e-4)


def test_a_metric_no_training_reports_is_refused_before_any_trial(tmp_path: Path, tiny_demo):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("AP50", "ap50"))
    out = tmp_path / "tune"
    args = ["tune", "retinanet/demo", str(space), *tiny_demo, "--out", str(out), "--trials", "1"]
    code, _, err = run(args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "metric 'ap50'" in err and "did you mean 'AP50'" in err
    assert not out.exists()  # no study, no trial
    code, _, err = run([*args, "data.val=null"])
    assert code == 2 and "no data.val" in err


def test_sqlite_file_of_another_schema_is_one_line(tmp_path: Path, tiny_demo):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as connection:
        connection.execute("create table studies (x integer)")
    args = ["tune", "retinanet/demo", str(space), *tiny_demo, "--trials", "1"]
    code, _, err = run([*args, "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "t")])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "is not an Optuna study database" in err and "Traceback" not in err
    assert not (tmp_path / "t" / "trials").exists()
