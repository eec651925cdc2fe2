"""Faults a run survives: SIGKILL (re-launch resumes exactly), SIGTERM and Ctrl-C (a
checkpoint is saved at the end of the iteration), bad checkpoints (truncated, foreign,
pickle payload: skipped with a message naming the file), NaN/inf losses (stop with a
report, or skip the step and count it), all through the CLI where it matters."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from tunedet.cli.main import main
from tunedet.config.loader import config_to_yaml, load_config
from tunedet.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tunedet.engine.interrupt import StopRequest, TrainingInterrupted
from tunedet.engine.run_dir import write_run_config
from tunedet.engine.trainer import Trainer
from tunedet.models.detectors.retinanet import RetinaNet

RUN = (
    "data.val=null",
    "train.max_iters=6",
    "train.ckpt_every=2",
    "train.log_every=1",
    "schedule.policy.type=constant",  # a 4-iteration run is the start of a 6-iteration one
    "threads=1",
)


def quiet(*_args, **_kwargs) -> None:
    pass


def mark_as_run(folder: Path, cfg) -> None:
    """Make ``folder`` a run of ``cfg`` (its config.yaml), so a trainer resumes there."""
    write_run_config(folder, config_to_yaml(cfg), "0123abcd")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_demo) -> dict[str, torch.Tensor]:
    """Final weights of the 6-iteration run, trained in one go."""
    trainer = Trainer(
        load_config("retinanet/demo", [*tiny_demo, *RUN]), tmp_path_factory.mktemp("u"), log=quiet
    )
    trainer.train()
    return trainer.model.state_dict()


class CLIProcess:
    """``tunedet train`` in a forked child (no second import of torch) whose optimizer
    steps are slowed by ``delay`` seconds, so that a test can signal it mid-run."""

    def __init__(self, tmp_path: Path, work_dir: Path, tiny_demo: list[str], delay: float):
        args = ["train", "retinanet/demo", *tiny_demo, *RUN, "--work-dir", str(work_dir)]
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        context = multiprocessing.get_context("fork")
        self.process = context.Process(target=self._run, args=(args, delay))
        self.process.start()

    def _run(self, args: list[str], delay: float) -> None:
        with open(self.out, "w") as out, open(self.err, "w") as err:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        step = Trainer._step

        def slow_step(trainer, loader):
            time.sleep(delay)
            return step(trainer, loader)

        Trainer._step = slow_step
        sys.exit(main(args))

    def wait_for(self, path: Path, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.process.is_alive(), self.err.read_text()[-2000:]
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.02)

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def finish(self, timeout: float = 300.0) -> tuple[int, str, str]:
        """``(exit code or -signal, stdout, stderr)``."""
        self.process.join(timeout)
        assert self.process.exitcode is not None, "the training process did not finish"
        return self.process.exitcode, self.out.read_text(), self.err.read_text()


def assert_same_weights(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]):
    assert state.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(state[name], value), name


def test_sigkill_mid_run_then_relaunch_ends_with_the_uninterrupted_weights(
    tmp_path: Path, tiny_demo: list[str], uninterrupted
):
    work = tmp_path / "run"
    run = CLIProcess(tmp_path, work, tiny_demo, delay=0.3)
    run.wait_for(work / "checkpoints" / "iter_0000002.pt")
    run.signal(signal.SIGKILL)
    assert run.finish()[0] == -signal.SIGKILL
    assert not (work / "checkpoints" / "iter_0000006.pt").exists()
    # a save that the kill cut short leaves a temporary file: the re-launch removes it
    stale = work / "checkpoints" / ".iter_0000004.pt.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")

    code, out, err = CLIProcess(tmp_path, work, tiny_demo, delay=0.0).finish()
    assert code == 0, err[-3000:]
    resumed = re.search(r"resumed from \S+iter_(\d+)\.pt at iteration (\d+)", out)
    assert resumed and int(resumed.group(1)) == int(resumed.group(2)) >= 2
    assert not stale.exists()
    final = load_checkpoint(work / "checkpoints" / "iter_0000006.pt")
    assert_same_weights(final["model"], uninterrupted)


def test_sigterm_saves_at_the_end_of_the_iteration_and_a_rerun_resumes_exactly(
    tmp_path: Path, tiny_demo: list[str], uninterrupted
):
    work = tmp_path / "run"
    run = CLIProcess(tmp_path, work, tiny_demo, delay=0.3)
    run.wait_for(work / "checkpoints" / "iter_0000002.pt")
    run.signal(signal.SIGTERM)
    code, _, err = run.finish()
    assert code == 128 + signal.SIGTERM, err[-3000:]
    lines = [line for line in err.splitlines() if "SIGTERM" in line]
    assert len(lines) == 1 and "Traceback" not in err
    stopped = int(lines[0].split("at iteration ")[1].split(":")[0])
    assert 2 <= stopped < 6
    saved = work / "checkpoints" / f"iter_{stopped:07d}.pt"
    assert f"saved {saved}" in lines[0]
    assert load_checkpoint(saved)["iteration"] == stopped

    code, out, err = CLIProcess(tmp_path, work, tiny_demo, delay=0.0).finish()
    assert code == 0, err[-3000:]
    assert f"resumed from {saved} at iteration {stopped}" in out
    final = load_checkpoint(work / "checkpoints" / "iter_0000006.pt")
    assert_same_weights(final["model"], uninterrupted)


def test_ctrl_c_in_process_saves_a_checkpoint_and_raises_training_interrupted(
    tmp_path: Path, tiny_demo: list[str], monkeypatch
):
    step = Trainer._step

    def step_then_ctrl_c(self, loader):
        if self.iteration == 2:  # iteration 3 is running when the user presses Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, loader)

    monkeypatch.setattr(Trainer, "_step", step_then_ctrl_c)
    # default_int_handler normally; SIG_IGN when pytest runs as a background job
    handler_before = signal.getsignal(signal.SIGINT)
    cfg = load_config("retinanet/demo", [*tiny_demo, *RUN, "train.ckpt_every=0"])
    trainer = Trainer(cfg, tmp_path, log=quiet)
    with pytest.raises(TrainingInterrupted) as stop:
        trainer.train()
    assert stop.value.iteration == 3 and stop.value.exit_code == 130
    assert "SIGINT at iteration 3" in str(stop.value)
    assert load_checkpoint(tmp_path / "checkpoints" / "iter_0000003.pt")["iteration"] == 3
    # the handlers are restored afterwards
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_second_signal_of_the_same_kind_stops_at_once():
    with StopRequest() as stop, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # another kind: the same request
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)


class Payload:
    """Anything that is not a tensor or a plain container."""


def _bad_checkpoints(ckpt_dir: Path) -> dict[str, Path]:
    good = ckpt_dir / "iter_0000004.pt"
    truncated = ckpt_dir / "iter_0000006.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = save_checkpoint(
        ckpt_dir / "iter_0000008.pt",
        {"iteration": 8, "model": {"w": torch.ones(2)}, "optimizer": {}, "rng": {}},
    )
    not_training = save_checkpoint(ckpt_dir / "iter_0000010.pt", {"weights": torch.ones(1)})
    pickled = ckpt_dir / "iter_0000012.pt"
    torch.save({"iteration": 12, "model": Payload()}, pickled)
    return {
        "truncated": truncated,
        "foreign": foreign,
        "not_training": not_training,
        "pickled": pickled,
    }


def test_resume_skips_truncated_foreign_and_pickled_checkpoints_naming_each(
    tmp_path: Path, tiny_demo: list[str]
):
    cfg = load_config("retinanet/demo", [*tiny_demo, *RUN, "train.max_iters=4"])
    first = Trainer(cfg, tmp_path, log=quiet)
    first.train()
    bad = _bad_checkpoints(tmp_path / "checkpoints")
    lines: list[str] = []
    resumed = Trainer(cfg, tmp_path, log=lines.append)
    assert resumed.resume()
    assert resumed.iteration == 4
    skipped = [line for line in lines if line.startswith("skipping bad checkpoint")]
    assert len(skipped) == 4 and all("\n" not in line for line in skipped)
    assert str(bad["pickled"]) in skipped[0] and "pickled object" in skipped[0]
    assert "Payload" in skipped[0]
    assert str(bad["not_training"]) in skipped[1] and "not a training checkpoint" in skipped[1]
    assert str(bad["foreign"]) in skipped[2] and "does not fit this model" in skipped[2]
    assert str(bad["truncated"]) in skipped[3] and "truncated or corrupt" in skipped[3]
    assert (
        lines[-1] == f"resumed from {tmp_path / 'checkpoints' / 'iter_0000004.pt'} at iteration 4"
    )
    assert_same_weights(resumed.model.state_dict(), first.model.state_dict())


def test_truncated_latest_checkpoint_falls_back_and_training_ends_as_if_never_cut(
    tmp_path: Path, tiny_demo: list[str], uninterrupted
):
    cfg = load_config("retinanet/demo", [*tiny_demo, *RUN])
    Trainer(load_config("retinanet/demo", [*tiny_demo, *RUN, "train.max_iters=4"]), tmp_path,
            log=quiet).train()  # fmt: skip
    latest = tmp_path / "checkpoints" / "iter_0000004.pt"
    latest.write_bytes(latest.read_bytes()[:1000])
    lines: list[str] = []
    trainer = Trainer(cfg, tmp_path, log=lines.append)
    trainer.train()
    lines = [line for line in lines if not line.startswith("precision: ")]
    assert lines[0].startswith(f"skipping bad checkpoint: checkpoint {latest} is truncated")
    assert lines[1].endswith("iter_0000002.pt at iteration 2")
    assert_same_weights(trainer.model.state_dict(), uninterrupted)


def test_cli_reports_one_line_when_no_checkpoint_is_usable(
    tmp_path: Path, tiny_demo: list[str], capsys
):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / "iter_0000002.pt").write_bytes(b"not a zip")
    mark_as_run(tmp_path, load_config("retinanet/demo", [*tiny_demo, *RUN]))
    code = main(["train", "retinanet/demo", *tiny_demo, *RUN, "--work-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"tunedet train: error: no usable checkpoint in {ckpt_dir}")


def test_cli_refuses_a_checkpoint_with_a_pickle_payload_in_one_line(
    tmp_path: Path, tiny_demo: list[str], capsys
):
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, path)
    code = main(["eval", "retinanet/demo", *tiny_demo, "--checkpoint", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert str(path) in err[0] and "weights_only=True" in err[0] and "Payload" in err[0]


def _nan_on_call(monkeypatch, bad_call: int) -> None:
    loss = RetinaNet.loss
    calls = {"n": 0}

    def maybe_nan(self, images, gt_boxes, gt_labels):
        calls["n"] += 1
        terms = loss(self, images, gt_boxes, gt_labels)
        if calls["n"] == bad_call:
            terms["cls"] = terms["cls"] * float("nan")
        return terms

    monkeypatch.setattr(RetinaNet, "loss", maybe_nan)


def test_cli_stops_on_a_nan_loss_with_one_line_naming_iteration_and_checkpoint(
    tmp_path: Path, tiny_demo: list[str], monkeypatch, capsys
):
    _nan_on_call(monkeypatch, bad_call=4)  # iteration 3 (0-based), after iter_0000002.pt
    code = main(["train", "retinanet/demo", *tiny_demo, *RUN, "--work-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("tunedet train: error: loss became nan at iteration 3 (cls=nan")
    assert err[-1].endswith(f"last good checkpoint: {tmp_path / 'checkpoints' / 'iter_0000002.pt'}")


def test_cli_skips_a_nan_step_counts_it_and_leaves_the_weights_alone(
    tmp_path: Path, tiny_demo: list[str], monkeypatch, capsys
):
    _nan_on_call(monkeypatch, bad_call=2)
    args = [*tiny_demo, *RUN, "train.on_nonfinite=skip", "train.max_iters=2", "train.ckpt_every=1"]
    assert main(["train", "retinanet/demo", *args, "--work-dir", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1]  # the skipped step logs no loss
    out = capsys.readouterr().out
    assert "skipped iteration 1: non-finite loss" in out
    assert "1 step(s) skipped for a non-finite loss" in out
    after_one = load_checkpoint(tmp_path / "checkpoints" / "iter_0000001.pt")["model"]
    after_two = load_checkpoint(tmp_path / "checkpoints" / "iter_0000002.pt")["model"]
    # the parameters are untouched (BatchNorm statistics saw the forward pass)
    parameters = [k for k in after_one if not k.split(".")[-1].startswith(("running", "num_"))]
    assert_same_weights(
        {k: after_two[k] for k in parameters}, {k: after_one[k] for k in parameters}
    )


def test_checkpoint_error_for_all_bad_names_the_folder(tmp_path: Path, tiny_demo: list[str]):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    torch.save({"model": Payload()}, ckpt_dir / "iter_0000002.pt")
    cfg = load_config("retinanet/demo", [*tiny_demo, *RUN])
    mark_as_run(tmp_path, cfg)
    trainer = Trainer(cfg, tmp_path, log=quiet)
    with pytest.raises(CheckpointError, match="1 found, all bad"):
        trainer.resume()
