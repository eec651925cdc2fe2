"""Knowledge distillation in training: a frozen teacher detector and the soft-target term.

The teacher is built from its own config and checkpoint (its EMA weights when the
checkpoint has them), frozen (``requires_grad=False``) and put in eval mode before
every forward pass. The student's classification logits are read with a forward
hook on its ``head`` (``head(feats) -> (cls_logits (B, A, C), ...)``), so the
detector's ``loss`` runs once, unchanged; the teacher sees the same images.
The term added to the student's losses is ``weight · mean over anchors of`` the
per-anchor distillation loss of ``losses/distillation.py`` (summed over classes for
the sigmoid form).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tunedet.losses.distillation import sigmoid_distillation, softmax_distillation


def build_teacher(teacher_config: str, teacher_checkpoint: str, device: torch.device) -> nn.Module:
    """The teacher detector of ``teacher_config`` with ``teacher_checkpoint``'s weights (its
    EMA weights when it has them: ``engine.build.model_from_checkpoint``)."""
    from tunedet.config.loader import load_config
    from tunedet.engine.build import model_from_checkpoint

    cfg = load_config(teacher_config)
    return model_from_checkpoint(teacher_checkpoint, device, cfg=cfg)[0]


class Distiller:
    """Soft targets from a frozen ``teacher`` for the classification logits of a student."""

    def __init__(
        self,
        teacher: nn.Module,
        temperature: float = 1.0,
        weight: float = 1.0,
        form: str = "sigmoid",
    ):
        if form not in ("sigmoid", "softmax"):
            raise ValueError(f"distillation form must be 'sigmoid' or 'softmax', got {form!r}")
        self.teacher = teacher.eval()
        self.teacher.requires_grad_(False)
        self.temperature = temperature
        self.weight = weight
        self.form = form
        self._student_logits: Tensor | None = None
        self._handle: Any = None

    def attach(self, student: nn.Module) -> None:
        """Record the student head's classification logits on each forward pass."""
        head = getattr(student, "head", None)
        if head is None:
            raise ValueError("distillation needs a detector with a `head` module")

        def keep_logits(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._student_logits = output[0]

        self._handle = head.register_forward_hook(keep_logits)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def loss(self, images: Tensor) -> Tensor:
        """The weighted distillation term for the student's last forward pass on ``images``."""
        if self._student_logits is None:
            raise RuntimeError("Distiller.loss called before a student forward pass")
        student = self._student_logits.float()
        self._student_logits = None
        self.teacher.eval()
        with torch.no_grad():
            teacher = self.teacher(images)[0].float()
        if teacher.shape != student.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher.shape)} do not match the student's "
                f"{tuple(student.shape)}: distillation needs the same anchors and classes"
            )
        student, teacher = student.flatten(0, -2), teacher.flatten(0, -2)
        if self.form == "sigmoid":
            per_anchor = sigmoid_distillation(student, teacher, self.temperature).sum(-1)
        else:
            per_anchor = softmax_distillation(student, teacher, self.temperature)
        return per_anchor.mean() * self.weight
