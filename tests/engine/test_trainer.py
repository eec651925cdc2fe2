"""The training loop: exact resume, the non-finite loss guard, run-directory contents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunedet.config.loader import load_config
from tunedet.engine.finite_guard import NonFiniteLossError
from tunedet.engine.trainer import Trainer

TINY = [
    "model.backbone.widths=[8, 8, 16, 16, 16]",
    "model.neck.out_channels=16",
    "model.head.feat_channels=16",
    "model.head.stacked_convs=1",
    "data.train.num_images=16",
    "data.train.image_size=64",
    "data.val.num_images=4",
    "data.val.image_size=64",
    "data.batch_size=2",
    "train.progress=false",
    "train.log_every=1",
    "schedule.warmup.iters=2",
]


def tiny_config(*overrides: str):
    return load_config("retinanet/demo", [*TINY, *overrides])


def quiet(*_args, **_kwargs) -> None:
    pass


def test_resume_continues_bit_for_bit(tmp_path: Path):
    # A constant main policy makes "stop at 4, then extend to 8" the same run as 8 straight.
    straight = Trainer(
        tiny_config(
            "train.max_iters=8",
            "train.ckpt_every=4",
            "data.val=null",
            "schedule.policy.type=constant",
        ),
        tmp_path / "a",
        log=quiet,
    )
    straight.train()

    first = Trainer(
        tiny_config(
            "train.max_iters=4",
            "train.ckpt_every=4",
            "data.val=null",
            "schedule.policy.type=constant",
        ),
        tmp_path / "b",
        log=quiet,
    )
    first.train()
    # Re-running with the longer budget in the same directory resumes from iteration 4.
    resumed = Trainer(
        tiny_config(
            "train.max_iters=8",
            "train.ckpt_every=4",
            "data.val=null",
            "schedule.policy.type=constant",
        ),
        tmp_path / "b",
        log=quiet,
    )
    resumed.train()
    assert resumed.iteration == 8
    for (name, a), (_, b) in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_run_directory_has_resolved_config_metrics_and_checkpoint(tmp_path: Path):
    trainer = Trainer(tiny_config("train.max_iters=3"), tmp_path, log=quiet)
    metrics = trainer.train()
    assert set(metrics) >= {"AP", "AP50"}
    assert (tmp_path / "checkpoints" / "iter_0000003.pt").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert any("val/AP50" in r for r in rows)
    assert list((tmp_path / "tb").iterdir())
    reloaded = load_config(tmp_path / "config.yaml")
    assert reloaded.model_dump() == trainer.cfg.model_dump()


def test_nan_loss_stops_with_iteration_terms_and_checkpoint(tmp_path: Path, monkeypatch):
    trainer = Trainer(
        tiny_config("train.max_iters=6", "train.ckpt_every=2", "data.val=null"), tmp_path, log=quiet
    )
    original = trainer.model.loss

    def poisoned(images, gt_boxes, gt_labels):
        terms = original(images, gt_boxes, gt_labels)
        if trainer.iteration == 3:
            terms["cls"] = terms["cls"] * float("nan")
        return terms

    monkeypatch.setattr(trainer.model, "loss", poisoned)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert "iteration 3" in message
    assert "cls=nan" in message
    assert "iter_0000002.pt" in message


def test_nan_loss_can_skip_the_step(tmp_path: Path, monkeypatch):
    trainer = Trainer(
        tiny_config("train.max_iters=4", "train.on_nonfinite=skip", "data.val=null"),
        tmp_path,
        log=quiet,
    )
    original = trainer.model.loss

    def poisoned(images, gt_boxes, gt_labels):
        terms = original(images, gt_boxes, gt_labels)
        if trainer.iteration == 1:
            terms["box"] = terms["box"] * float("inf")
        return terms

    monkeypatch.setattr(trainer.model, "loss", poisoned)
    trainer.train()
    assert trainer.iteration == 4
    assert trainer.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
