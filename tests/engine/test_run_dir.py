"""Run directories: a run of the same config continues, another config or a folder of
the user's files gets a numbered directory, ``--resume`` refuses another config with the
keys that differ, ``config.yaml`` is never written over a file the run did not write."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunedet.engine.run_dir import (
    RunDirError,
    choose_run_dir,
    config_differences,
    saved_run_config,
    saved_run_id,
    write_run_config,
)

CONFIG = {"seed": 0, "work_dir": "runs/demo", "optim": {"lr": 0.01}, "train": {"max_iters": 40}}


def make_run(folder: Path, config: dict, run_id: str = "abc123") -> None:
    import yaml

    write_run_config(folder, yaml.safe_dump(config), run_id)


def test_missing_or_empty_folder_is_used_as_asked(tmp_path: Path):
    assert choose_run_dir(tmp_path / "new", CONFIG).path == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    chosen = choose_run_dir(tmp_path / "empty", CONFIG)
    assert chosen.path == tmp_path / "empty" and chosen.note is None


def test_same_config_continues_in_place_ignoring_where_and_how_long(tmp_path: Path):
    make_run(tmp_path / "demo", CONFIG)
    longer = {**CONFIG, "work_dir": "elsewhere", "train": {"max_iters": 80}}
    chosen = choose_run_dir(tmp_path / "demo", longer)
    assert chosen.path == tmp_path / "demo" and chosen.resume and chosen.note is None


def test_another_config_gets_the_next_numbered_folder_and_a_rerun_finds_it(tmp_path: Path):
    make_run(tmp_path / "demo", CONFIG)
    other = {**CONFIG, "optim": {"lr": 0.02}}
    chosen = choose_run_dir(tmp_path / "demo", other)
    assert chosen.path == tmp_path / "demo2" and chosen.resume is False
    assert "holds a run of another config (optim.lr: 0.01 -> 0.02)" in chosen.note
    make_run(tmp_path / "demo2", other, "def456")
    again = choose_run_dir(tmp_path / "demo", other)
    assert again.path == tmp_path / "demo2" and again.resume
    third = choose_run_dir(tmp_path / "demo", {**CONFIG, "seed": 1})
    assert third.path == tmp_path / "demo3"


def test_resume_false_starts_a_fresh_folder_next_to_a_run_of_the_same_config(tmp_path: Path):
    make_run(tmp_path / "demo", CONFIG)
    chosen = choose_run_dir(tmp_path / "demo", CONFIG, resume=False)
    assert chosen.path == tmp_path / "demo2" and not chosen.resume


def test_folder_of_the_users_own_files_is_not_written_into(tmp_path: Path):
    own = tmp_path / "project"
    own.mkdir()
    (own / "config.yaml").write_text("# my experiment\n_base_: retinanet/demo\n")
    chosen = choose_run_dir(own, CONFIG)
    assert chosen.path == tmp_path / "project2"
    assert "holds files of something other than a tunedet run" in chosen.note
    assert saved_run_config(own) is None
    with pytest.raises(RunDirError, match="not overwriting it"):
        write_run_config(own, "seed: 0\n", "abc123")
    assert (own / "config.yaml").read_text() == "# my experiment\n_base_: retinanet/demo\n"


def test_config_yaml_of_another_run_is_not_overwritten(tmp_path: Path):
    make_run(tmp_path, CONFIG, "abc123")
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(RunDirError, match="belongs to another run"):
        write_run_config(tmp_path, "seed: 1\n", "fff000")
    assert (tmp_path / "config.yaml").read_text() == before
    write_run_config(tmp_path, "seed: 2\n", "abc123")  # the same run rewrites its own
    assert saved_run_id(tmp_path) == "abc123" and saved_run_config(tmp_path) == {"seed": 2}


def test_explicit_resume_refuses_another_config_listing_the_keys(tmp_path: Path):
    make_run(tmp_path / "demo", CONFIG)
    other = {**CONFIG, "seed": 3, "optim": {"lr": 0.02}}
    with pytest.raises(RunDirError) as error:
        choose_run_dir(tmp_path / "demo", other, must_resume=True)
    message = str(error.value)
    assert "optim.lr: 0.01 -> 0.02; seed: 0 -> 3" in message and "\n" not in message
    assert choose_run_dir(tmp_path / "demo", CONFIG, must_resume=True).resume
    with pytest.raises(RunDirError, match="nothing to resume"):
        choose_run_dir(tmp_path / "none", CONFIG, must_resume=True)


def test_config_differences_name_added_and_removed_keys():
    assert config_differences({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ["a.c: <unset> -> 2"]
    assert config_differences({"train": {"progress": True}}, {"train": {"progress": False}}) == []


def test_a_name_ending_in_a_digit_is_numbered_after_an_underscore(tmp_path: Path):
    make_run(tmp_path / "seed1", CONFIG)
    assert choose_run_dir(tmp_path / "seed1", {**CONFIG, "seed": 5}).path == tmp_path / "seed1_2"
