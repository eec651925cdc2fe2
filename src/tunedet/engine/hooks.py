"""What the training loop does around each optimizer step, one small hook per concern.

A hook has four moments: ``before_train``, ``before_step`` (the iteration about to
run is ``trainer.iteration``), ``after_step`` (``trainer.iteration`` already counts the
step; ``result`` is ``(loss terms, total)`` or None for a step skipped on a non-finite
loss) and ``after_train`` (after the final checkpoint). The trainer calls its
``hooks`` in list order; the order of the default list is the order of the original
loop: LR, EMA, logging, evaluation (with early stopping), checkpoints.
"""

from __future__ import annotations

import time
from typing import Any

from tunedet.engine import distributed
from tunedet.engine.best_checkpoint import update_best
from tunedet.engine.progress import progress_line
from tunedet.losses.rank_mean import reduce_mean


class Hook:
    """Does nothing at each moment; subclasses override the moments they need."""

    def before_train(self, trainer: Any) -> None:
        pass

    def before_step(self, trainer: Any) -> None:
        pass

    def after_step(self, trainer: Any, result: Any) -> None:
        pass

    def after_train(self, trainer: Any) -> None:
        pass


class LRScheduleHook(Hook):
    """Sets the lr of ``trainer.schedule`` for the iteration (``trainer.lr``), with Detectron's
    momentum correction (``schedule.scale_momentum``) and a log line on each lr change
    larger than ``train.log_lr_change``."""

    def __init__(self, momentum_correction: Any = None, lr_log: Any = None):
        self.momentum_correction = momentum_correction
        self.lr_log = lr_log

    def before_step(self, trainer: Any) -> None:
        lr = trainer.schedule.apply(trainer.optimizer, trainer.iteration)
        if self.momentum_correction is not None and trainer.iteration > 0:
            previous = trainer.schedule.lr_at(trainer.iteration - 1)
            self.momentum_correction.apply(trainer.optimizer, previous, lr)
        if self.lr_log is not None and self.lr_log.changed(lr):
            trainer.log(f"iteration {trainer.iteration}: lr {lr:.6g}")
        trainer.lr = lr


class EMAHook(Hook):
    """Updates ``trainer.ema`` (the weights' moving average) after each step taken."""

    def after_step(self, trainer: Any, result: Any) -> None:
        if result is not None and trainer.ema is not None:
            trainer.ema.update(trainer.model)


class MetricsLogHook(Hook):
    """Every ``log_every`` iterations (and the last): the mean over ranks of the loss terms,
    with lr, time and skipped steps, to ``trainer.loggers`` (metrics.jsonl, TensorBoard)
    and the bar; without a bar (``trainer.bar_shown`` False) a plain line on the log."""

    def __init__(self, log_every: int):
        self.log_every = log_every

    def before_train(self, trainer: Any) -> None:
        self.start, self.start_iter = time.monotonic(), trainer.iteration

    def after_step(self, trainer: Any, result: Any) -> None:
        it = trainer.iteration
        if result is None or not (it % self.log_every == 0 or it == trainer.max_iters):
            return
        # the mean over ranks of each rank's terms is the global batch's loss
        losses = {k: float(reduce_mean(v)) for k, v in result[0].items()}
        elapsed = time.monotonic() - self.start
        row = {**losses, "loss": sum(losses.values())}
        row.update(lr=trainer.lr, time=elapsed, skipped=trainer.skipped_steps)
        trainer.loggers.log(it, row)
        trainer.bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k != "time"})
        if not trainer.bar_shown:
            total = trainer.max_iters if trainer.length_known else None
            trainer.log(progress_line(it, total, row, elapsed, it - self.start_iter))


class EvalHook(Hook):
    """Every ``eval_every`` iterations: ``trainer.evaluate()`` on the validation set, its
    metrics logged as ``val/...``; then ``trainer.on_evaluate(iteration, metrics)`` (True
    stops training: a pruned tuning trial) and ``trainer.early_stop``. After training, one
    more evaluation unless the last iteration was just evaluated. ``best.pt`` follows
    metric ``best_metric`` (``best_checkpoint.best_metric``)."""

    def __init__(self, eval_every: int, best_metric: str = "AP"):
        self.eval_every = eval_every
        self.best_metric = best_metric
        self.evaluated_at: int | None = None

    def _evaluate(self, trainer: Any) -> None:
        trainer.metrics = trainer.evaluate()
        self.evaluated_at = trainer.iteration
        trainer.loggers.log(trainer.iteration, {f"val/{k}": v for k, v in trainer.metrics.items()})
        update_best(trainer, trainer.metrics, self.best_metric)  # best.pt

    def after_step(self, trainer: Any, result: Any) -> None:
        if not (self.eval_every and trainer.iteration % self.eval_every == 0 and trainer.val_set):
            return
        self._evaluate(trainer)
        trainer.model.train()
        metrics, it = trainer.metrics, trainer.iteration
        if trainer.on_evaluate is not None:
            pruned = trainer.is_main and bool(trainer.on_evaluate(it, metrics))
            if distributed.broadcast_object(pruned):
                trainer.stopping = True
                trainer.log(f"stopped at iteration {it} by on_evaluate")
        early = trainer.early_stop
        if early is not None and early.update(metrics, it):
            trainer.stopping = True
            trainer.log(
                f"early stop at iteration {it}: no {early.metric} improvement in "
                f"{early.patience} evaluations (best {early.best:.4g} at iteration "
                f"{early.best_iteration})"
            )

    def after_train(self, trainer: Any) -> None:
        if trainer.val_set is not None and self.evaluated_at != trainer.iteration:
            self._evaluate(trainer)


class CheckpointHook(Hook):
    """``trainer.save()`` every ``ckpt_every`` iterations (0: only the final checkpoint)."""

    def __init__(self, ckpt_every: int):
        self.ckpt_every = ckpt_every

    def after_step(self, trainer: Any, result: Any) -> None:
        if self.ckpt_every and trainer.iteration % self.ckpt_every == 0:
            trainer.save()
