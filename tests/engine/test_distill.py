"""Distillation in the trainer: a frozen teacher in eval mode, the term in the losses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tunedet.config.loader import config_to_yaml
from tunedet.engine.checkpoint import save_checkpoint
from tunedet.engine.distill import Distiller
from tunedet.engine.trainer import Trainer
from tunedet.models import build_detector

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import quiet, tiny_config  # noqa: E402


def write_teacher(tmp_path: Path) -> tuple[Path, Path]:
    """A teacher config (the tiny student's, with BatchNorm) and a checkpoint of its weights."""
    cfg = tiny_config("train.max_iters=1")
    config = tmp_path / "teacher.yaml"
    config.write_text(config_to_yaml(cfg))
    torch.manual_seed(123)
    teacher = build_detector(cfg.model.model_dump())
    checkpoint = save_checkpoint(tmp_path / "teacher.pt", {"model": teacher.state_dict()})
    return config, checkpoint


def test_teacher_is_frozen_in_eval_mode_and_never_changes(tmp_path: Path):
    config, checkpoint = write_teacher(tmp_path)
    distill = f"{{teacher_config: {config}, teacher_checkpoint: {checkpoint}, temperature: 2.0}}"
    trainer = Trainer(
        tiny_config("train.max_iters=3", "data.val=null", f"train.distill={distill}"),
        tmp_path / "run",
        log=quiet,
    )
    teacher = trainer.distiller.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert all(not p.requires_grad for p in teacher.parameters())
    modes = []
    original = teacher.forward

    def recording_forward(images):
        modes.append(any(m.training for m in teacher.modules()))
        return original(images)

    teacher.forward = recording_forward
    terms = []
    student_loss = trainer.distiller.loss

    def recording_loss(images):
        value = student_loss(images)
        terms.append(float(value.detach()))
        return value

    trainer.distiller.loss = recording_loss
    trainer.train()
    assert modes == [False, False, False]
    assert len(terms) == 3 and all(t > 0 for t in terms)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in teacher.parameters())


def test_distiller_term_is_zero_when_the_student_is_the_teacher():
    cfg = tiny_config("train.max_iters=1")
    model = build_detector(cfg.model.model_dump()).eval()
    twin = build_detector(cfg.model.model_dump())
    twin.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 64, 64)
    for form in ("sigmoid", "softmax"):
        distiller = Distiller(twin, temperature=3.0, weight=2.0, form=form)
        distiller.attach(model)
        model(images)
        assert distiller.loss(images).item() == pytest.approx(0.0, abs=1e-6)
        distiller.detach()
