"""Runs never overwrite each other or the user's files, through ``tunedet train``: two
configs that name one ``work_dir`` are both kept whole, ``--resume`` refuses another
config before writing anything, ``--work-dir`` at the folder of the user's own
``config.yaml`` leaves it alone; every run has ``last.pt`` and ``best.pt``; a bit-flipped
checkpoint is skipped like a truncated one; the final checkpoint is written once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tunedet.cli.main import main
from tunedet.config.loader import BUILTIN_CONFIG_DIR, load_config
from tunedet.engine import trainer as trainer_module
from tunedet.engine.checkpoint import (
    checkpoint_run_id,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from tunedet.engine.trainer import Trainer

TINY = (
    "train.ckpt_every=1",
    "train.log_every=1",
    "train.eval_every=1",
    "data.val.num_images=2",
    "threads=1",
)


def quiet(*_args, **_kwargs) -> None:
    pass


def snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {
        str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def user_config(folder: Path, name: str, lr: float) -> Path:
    """A user's config on the demo recipe that names the demo's run folder ``runs/demo``."""
    path = folder / f"{name}.yaml"
    base = BUILTIN_CONFIG_DIR / "retinanet" / "demo.yaml"
    path.write_text(
        f"# {name}: my own comment\n_base_: {base}\nwork_dir: runs/demo\noptim: {{lr: {lr}}}\n"
    )
    return path


def test_a_config_on_a_base_runs_in_a_folder_of_its_own_name(tmp_path: Path):
    """A base's ``work_dir`` is not inherited: ``mine.yaml`` on the demo recipe gets
    ``runs/mine`` (the CLI's default), not the demo's ``runs/demo``."""
    from tunedet.cli.main import run_dir_for

    path = tmp_path / "mine.yaml"
    path.write_text("_base_: retinanet/demo\noptim: {lr: 0.003}\n")
    cfg = load_config(path)
    assert cfg.work_dir is None
    assert run_dir_for(cfg, str(path), None) == Path("runs") / "mine"
    assert load_config("retinanet/demo").work_dir == "runs/demo"  # a config's own key stays


def test_two_configs_with_one_work_dir_are_both_kept_whole(
    tmp_path: Path, tiny_demo: list[str], monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    first, second = user_config(tmp_path, "first", 0.001), user_config(tmp_path, "second", 0.002)
    assert main(["train", str(first), *tiny_demo, *TINY]) == 0
    demo = Path("runs") / "demo"  # relative, as the config says
    kept = snapshot(demo)
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl"} <= kept.keys()
    capsys.readouterr()

    assert main(["train", str(second), *tiny_demo, *TINY]) == 0
    out = capsys.readouterr().out
    demo2 = Path("runs") / "demo2"
    assert f"run directory {demo2}: {demo} holds a run of another config (optim.lr:" in out
    assert snapshot(demo) == kept  # the first run, byte for byte
    saved = load_config(demo2 / "config.yaml")
    assert saved.optim.lr == 0.002 and saved.work_dir == str(demo2)  # the real work dir
    assert load_config(demo / "config.yaml").work_dir == str(demo)
    rows = [json.loads(line) for line in (demo2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    last = load_checkpoint(demo2 / "last.pt")
    assert last["iteration"] == 2 and last["config"]["optim"]["lr"] == 0.002
    best = load_checkpoint(demo2 / "best.pt")
    assert best["best"]["metric"] == "AP" and "optimizer" not in best
    assert best["run_id"] == last["run_id"] != load_checkpoint(demo / "last.pt")["run_id"]

    # the second config again finds its own run and continues it
    assert main(["train", str(second), *tiny_demo, *TINY]) == 0
    assert f"resumed from {demo2 / 'checkpoints' / 'iter_0000002.pt'}" in capsys.readouterr().out
    assert not Path("runs/demo3").exists()

    # --resume into the first run with the second config: refused, nothing written
    code = main(["train", str(second), *tiny_demo, *TINY, "--resume", "--work-dir", str(demo)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"tunedet train: error: cannot resume {demo}: its run has another")
    assert "optim.lr: 0.001 -> 0.002" in err[0]
    assert snapshot(demo) == kept


def test_work_dir_at_the_folder_of_the_users_config_leaves_it_alone(
    tmp_path: Path, tiny_demo: list[str], capsys
):
    project = tmp_path / "project"
    project.mkdir()
    mine = project / "config.yaml"
    base = BUILTIN_CONFIG_DIR / "retinanet" / "demo.yaml"
    text = f"# my experiment, with my notes\n_base_: {base}\n"
    mine.write_text(text)
    argv = ["train", str(mine), *tiny_demo, *TINY, "data.val=null", "--work-dir", str(project)]
    assert main(argv) == 0
    assert mine.read_text() == text and sorted(p.name for p in project.iterdir()) == ["config.yaml"]
    assert (tmp_path / "project2" / "last.pt").is_file()
    assert f"run directory: {tmp_path / 'project2'}" in capsys.readouterr().out


def test_pruning_removes_only_checkpoints_of_the_current_run(tmp_path: Path):
    for iteration, run in ((100, "old"), (200, "old"), (1, "new"), (2, "new"), (3, "new")):
        save_checkpoint(
            tmp_path / "checkpoints" / f"iter_{iteration:07d}.pt",
            {"run_id": run, "w": torch.zeros(2)},
        )
    (tmp_path / "checkpoints" / "iter_0000300.pt").write_bytes(b"unreadable: never ours")
    removed = prune_checkpoints(tmp_path, keep=2, run_id="new")
    assert [p.name for p in removed] == ["iter_0000001.pt"]
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == [f"iter_{i:07d}.pt" for i in (2, 3, 100, 200, 300)]
    assert checkpoint_run_id(tmp_path / "checkpoints" / "iter_0000200.pt") == "old"


def flip_a_bit_in_the_weights(path: Path) -> None:
    """Flip one bit inside a tensor's bytes: the zip archive stays readable."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
        offset = entry.header_offset + 30 + len(entry.filename) + len(entry.extra)
    data = bytearray(path.read_bytes())
    data[offset + entry.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_bit_flipped_checkpoint_is_skipped_and_never_named_last_good(
    tmp_path: Path, tiny_demo: list[str]
):
    cfg = load_config("retinanet/demo", [*tiny_demo, *TINY, "data.val=null", "train.ckpt_every=1"])
    Trainer(cfg, tmp_path, log=quiet).train()
    latest = tmp_path / "checkpoints" / "iter_0000002.pt"
    flip_a_bit_in_the_weights(latest)
    (tmp_path / ".best.pt.killed.tmp").write_bytes(b"a save cut short")
    lines: list[str] = []
    resumed = Trainer(cfg, tmp_path, log=lines.append)
    assert resumed.resume()
    lines = [line for line in lines if not line.startswith("precision: ")]
    assert f"skipping bad checkpoint: checkpoint {latest} is corrupt (CRC-32 mismatch" in lines[0]
    previous = tmp_path / "checkpoints" / "iter_0000001.pt"
    assert resumed.iteration == 1 and resumed.last_checkpoint == str(previous)
    assert not (tmp_path / ".best.pt.killed.tmp").exists()


def test_final_checkpoint_is_written_once(tmp_path: Path, tiny_demo: list[str], monkeypatch):
    written: list[str] = []
    save = trainer_module.save_checkpoint

    def counting_save(path, state):
        written.append(Path(path).name)
        return save(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", counting_save)
    cfg = load_config("retinanet/demo", [*tiny_demo, *TINY, "data.val=null"])
    Trainer(cfg, tmp_path, log=quiet).train()
    assert written == ["iter_0000001.pt", "iter_0000002.pt"]
    assert (tmp_path / "last.pt").samefile(tmp_path / "checkpoints" / "iter_0000002.pt")
    assert (tmp_path / "best.pt").samefile(tmp_path / "last.pt")  # no validation: the last


def test_unknown_best_metric_is_refused_before_training(tmp_path: Path, tiny_demo: list[str]):
    cfg = load_config("retinanet/demo", [*tiny_demo, "eval.best_metric=mAP"])
    with pytest.raises(ValueError, match="eval.best_metric 'mAP' is not a metric of eval.metric"):
        Trainer(cfg, tmp_path, log=quiet)


def test_resume_false_beside_an_older_longer_run_keeps_both(tmp_path: Path, tiny_demo: list[str]):
    overrides = [*tiny_demo, *TINY, "data.val=null", "train.keep_checkpoints=1"]
    older = load_config("retinanet/demo", [*overrides, "train.max_iters=3"])
    Trainer(older, tmp_path / "r", log=quiet).train()
    kept = snapshot(tmp_path / "r")
    fresh = load_config("retinanet/demo", [*overrides, "train.resume=false"])
    trainer = Trainer(fresh, tmp_path / "r", log=quiet)
    trainer.train()
    assert trainer.run_dir == tmp_path / "r2" and trainer.iteration == 2
    assert snapshot(tmp_path / "r") == kept  # the older run's iter_0000003.pt included
    assert "checkpoints/iter_0000003.pt" in kept
    assert [p.name for p in (tmp_path / "r2" / "checkpoints").iterdir()] == ["iter_0000002.pt"]
