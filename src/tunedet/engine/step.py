"""One optimizer step: gradient accumulation, mixed precision, the L1 penalty, gradient
clipping and the non-finite loss guard.

A step reads ``accumulate`` batches; each batch's loss is divided by ``accumulate``
before backward, so the gradient is the mean over the effective batch ``batch_size ·
accumulate`` when the loss is a per-image mean. With a ``GradScaler`` (fp16) the
gradients are unscaled before the L1 penalty ``l1 · sign(w)`` is added and the global
gradient norm is clipped to ``grad_clip``. Under DDP the gradients are averaged on the
last backward of the step only. A non-finite loss on any rank stops training
(``on_nonfinite="stop"``: ``NonFiniteLossError`` naming the terms) or skips the step on
every rank (``"skip"``: the step returns None).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from tunedet.engine import distributed
from tunedet.engine.amp import autocast
from tunedet.engine.finite_guard import check_finite_loss, is_finite_loss
from tunedet.engine.optim import apply_l1_penalty, clip_gradients
from tunedet.models.detectors import loss_extras

Losses = dict[str, torch.Tensor]


class DetectorLoss:
    """``loss(batch) -> {term: scalar}``: the detector's loss terms on a ``DetectionBatch``
    (through DDP when given, under autocast of ``amp``), plus the distillation term.
    ``loss``: what computes the terms instead of ``model.loss`` (``torch.compile`` of it
    for ``train.compile``)."""

    def __init__(
        self,
        model: nn.Module,
        amp: str = "none",
        amp_device: str = "cpu",
        ddp: Any = None,
        distiller: Any = None,
        loss: Callable[..., Losses] | None = None,
    ):
        self.model, self.amp, self.amp_device = model, amp, amp_device
        self.ddp, self.distiller = ddp, distiller
        self.loss = loss

    def __call__(self, batch: Any) -> Losses:
        if self.ddp is not None:
            compute = self.ddp
        else:
            compute = self.loss if self.loss is not None else self.model.loss
        extras = loss_extras(self.model, batch)
        with autocast(self.amp, self.amp_device):
            losses = compute(batch.images, batch.gt_boxes, batch.gt_labels, **extras)
            if self.distiller is not None:
                losses = {**losses, "distill": self.distiller.loss(batch.images)}
        return losses


# Dynamo settings for the loss: data-dependent sizes (boolean masks, nonzero) and scalars
# stay inside the graph instead of ending it
CAPTURE_DATA_DEPENDENT = {"capture_dynamic_output_shape_ops": True, "capture_scalar_outputs": True}


def compile_loss(model: nn.Module, log: Callable[[str], Any] = print) -> Callable[..., Losses]:
    """``torch.compile`` of ``model.loss`` (``train.compile``). The assignment and the
    losses select positives with boolean masks, whose output sizes depend on the data;
    Dynamo would split the computation into a graph per mask (eleven breaks in
    RetinaNet's loss), so such ops are captured in the graph instead. Where the compiler
    fails on the first batch (Inductor cannot lower the R-CNN heads' data-dependent
    sizes in torch 2.14), that is said in one line and training goes on uncompiled."""
    compiled = torch.compile(model.loss)
    chosen: Callable[..., Losses] | None = None  # after the first batch: what ran it

    def captured(*args: Any, **kwargs: Any) -> Losses:
        with torch._dynamo.config.patch(**CAPTURE_DATA_DEPENDENT):
            return compiled(*args, **kwargs)

    def loss(*args: Any, **kwargs: Any) -> Losses:
        nonlocal chosen
        if chosen is not None:
            return chosen(*args, **kwargs)
        try:
            losses = captured(*args, **kwargs)
            chosen = captured
            return losses
        except (torch._dynamo.exc.TorchDynamoException, RuntimeError) as error:
            lines = str(error).strip().splitlines()
            log(
                f"train.compile: torch.compile failed on {type(model).__name__}'s loss "
                f"({type(error).__name__}: {lines[0][:200] if lines else ''}); "
                "training continues uncompiled"
            )
            chosen = model.loss
            return model.loss(*args, **kwargs)

    return loss


class OptimizerStep:
    """``step(batches, iteration) -> (mean loss terms, total)``, or None for a skipped step."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Any], Losses],
        device: torch.device,
        accumulate: int = 1,
        scaler: torch.amp.GradScaler | None = None,
        grad_clip: float | None = None,
        on_nonfinite: str = "stop",
        ddp: Any = None,
        channels_last: bool = False,
    ):
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.device = device
        self.accumulate = accumulate
        self.scaler = scaler
        self.grad_clip = grad_clip
        self.on_nonfinite = on_nonfinite
        self.ddp = ddp
        self.channels_last = channels_last

    def __call__(
        self, batches: Iterator[Any], iteration: int, last_checkpoint: str | None = None
    ) -> tuple[Losses, torch.Tensor] | None:
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for micro in range(self.accumulate):
            batch = next(batches).to(self.device)
            if self.channels_last:
                batch = replace(
                    batch, images=batch.images.contiguous(memory_format=torch.channels_last)
                )
            last = micro == self.accumulate - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else _no_context()
            with sync:
                losses = self.loss_fn(batch)
                total = sum(losses.values())
                finite = is_finite_loss(losses) and bool(torch.isfinite(total))
                # every rank must skip (or stop) together, or the others wait forever
                (bad_somewhere,) = distributed.any_over_ranks([not finite], self.device)
                if bad_somewhere:
                    if self.on_nonfinite == "stop":
                        terms = {**losses, "total": total}
                        if finite:  # another rank's loss: name it in the report
                            terms = {"total": total.new_tensor(math.nan)}
                        check_finite_loss(terms, iteration, last_checkpoint)
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                scaled = total / self.accumulate
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value.detach() / self.accumulate
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        apply_l1_penalty(self.optimizer)
        if self.grad_clip is not None:
            clip_gradients(self.model, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return sums, sum(sums.values())


def _no_context() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()
