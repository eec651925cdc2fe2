"""Every shipped demo config, killed at an odd iteration and re-run, ends with the weights
of an uninterrupted run, tensor for tensor: every random draw of the training path
(samplers, flips, RoI sampling, dropout) continues from the checkpoint's generators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunedet.config.loader import BUILTIN_CONFIG_DIR, load_raw, validate
from tunedet.engine.trainer import Trainer

DEMOS = sorted(BUILTIN_CONFIG_DIR.glob("*/demo.yaml"))
KILLED_AT = 3  # iterations done when the process dies; the last checkpoint is at 2


class Killed(Exception):
    """Stands for SIGKILL: nothing after it runs (no save, no cleanup of the run)."""


def tiny(path: Path) -> dict:
    """The demo config on four 64-px synthetic images (the fixed input size of a config
    that declares one), batches of two, four iterations, a checkpoint every two."""
    raw = load_raw(path)
    model = raw["model"]
    declared = [model.get(k, {}).get("input_size") for k in ("neck", "anchor_generator")]
    train = {
        **raw["data"]["train"],
        "num_images": 4,
        "image_size": next(filter(None, declared), 64),
    }
    raw["data"] = {**raw["data"], "train": train, "val": None, "batch_size": 2}
    raw["train"] = {"max_iters": 4, "ckpt_every": 2, "log_every": 1, "progress": False}
    raw["schedule"] = {**raw.get("schedule", {}), "warmup": {"type": "linear", "iters": 2}}
    raw.update(threads=1, device="cpu", load_from=None)
    backbone = model.get("backbone", {})
    if "init" in backbone:
        raw["model"] = {**model, "backbone": {**backbone, "init": "none"}}
    return raw


def quiet(*_args, **_kwargs) -> None:
    pass


@pytest.mark.parametrize("path", DEMOS, ids=[p.parent.name for p in DEMOS])
def test_demo_killed_at_an_odd_iteration_resumes_to_the_uninterrupted_weights(
    path: Path, tmp_path: Path, monkeypatch
):
    threads = torch.get_num_threads()
    try:
        cfg = validate(tiny(path), source=str(path))
        straight = Trainer(cfg, tmp_path / "straight", log=quiet)
        straight.train()

        step = Trainer._step

        def dies_mid_run(trainer, loader):
            if trainer.iteration == KILLED_AT:
                raise Killed
            return step(trainer, loader)

        monkeypatch.setattr(Trainer, "_step", dies_mid_run)
        with pytest.raises(Killed):
            Trainer(cfg, tmp_path / "cut", log=quiet).train()
        monkeypatch.setattr(Trainer, "_step", step)
        torch.manual_seed(1234)  # a fresh process's generators are anywhere
        lines: list[str] = []
        resumed = Trainer(cfg, tmp_path / "cut", log=lines.append)
        resumed.train()
    finally:
        torch.set_num_threads(threads)
    assert any("at iteration 2" in line and line.startswith("resumed from") for line in lines)
    assert resumed.run_dir == tmp_path / "cut" and resumed.iteration == 4
    reference = straight.model.state_dict()
    state = resumed.model.state_dict()
    assert state.keys() == reference.keys()
    differing = [name for name, value in reference.items() if not torch.equal(state[name], value)]
    assert differing == []
    # the log continues the checkpoint's: the killed run's row 3 is dropped, not doubled
    rows = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["step"] for row in rows] == [1, 2, 3, 4]
    assert any(
        line.endswith("dropped 1 row(s) written after the checkpoint resumed from")
        for line in lines
    )
