"""The trainer: a config's parts, built once (``engine.build``), run by a small loop.

One iteration is one optimizer step over ``train.accumulate`` batches (``step``);
around it the ``hooks`` set the LR, update the EMA, log, evaluate (with early
stopping) and write checkpoints, in that order. A checkpoint holds model, optimizer,
EMA, loss scaler, early-stopping state, iteration and RNG state; a re-run of the same
config in the same ``work_dir`` resumes from the latest one and continues exactly (the
batch order is a pure function of ``(seed, epoch)``, each sample's augmentation of
``(seed, epoch, index)``). Under ``torchrun`` every process runs the loop on its slice
of the global batch; rank 0 alone logs and writes checkpoints. A SIGTERM or Ctrl-C
saves a checkpoint at the end of the iteration and raises ``TrainingInterrupted``.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from tunedet.config.loader import config_to_yaml
from tunedet.data.build import build_dataset
from tunedet.engine import distributed
from tunedet.engine.amp import check_amp, grad_scaler, model_device, resolve_amp
from tunedet.engine.best_checkpoint import check_best_metric
from tunedet.engine.build import (
    UNBOUNDED_ITERS,
    build_model,
    build_optimizer_for,
    build_schedule,
    check_datasets,
    default_hooks,
    eval_settings,
    resolve_device,
    run_length,
    seed_everything,
    train_loader,
)
from tunedet.engine.checkpoint import (
    checkpoint_path,
    config_to_dict,
    link_checkpoint,
    new_run_id,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
)
from tunedet.engine.distill import Distiller, build_teacher
from tunedet.engine.early_stopping import EarlyStopping
from tunedet.engine.ema import ModelEMA
from tunedet.engine.evaluator import evaluate_model, predict_dataset
from tunedet.engine.hooks import Hook
from tunedet.engine.interrupt import StopRequest, TrainingInterrupted
from tunedet.engine.lr_schedule import LRSchedule
from tunedet.engine.metrics_log import JSONLLogger, MetricsLoggers, TensorBoardLogger
from tunedet.engine.progress import bars_enabled
from tunedet.engine.resume import resume_run
from tunedet.engine.run_dir import choose_run_dir, saved_run_id, write_run_config
from tunedet.engine.step import DetectorLoss, OptimizerStep, compile_loss
from tunedet.engine.time_budget import TimeBudget

__all__ = ["Trainer"]

_PRECISION_NAMES = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """The log of ranks other than 0."""


class Trainer:
    """Train one experiment config in ``run_dir`` (in every process of a torchrun job).

    The parts (``model``, ``optimizer``, ``schedule``, ``step``, ``ema``, ``early_stop``,
    ``hooks``) are attributes built from the config; append a ``Hook`` to ``hooks``
    before ``train()`` to add behaviour around each step.
    """

    def __init__(
        self,
        cfg: Any,
        run_dir: str | Path,
        log: Any = print,
        on_evaluate: Any = None,
        must_resume: bool = False,
    ) -> None:
        """``on_evaluate(iteration, metrics) -> bool``, when given, is called after every
        periodic evaluation (``train.eval_every``); returning True stops training there (a
        tuning trial being pruned, for instance).

        ``run_dir`` is the folder asked for: a run of another config there (or a folder
        of other files) sends this run to a numbered sibling (``run_dir.py``); the chosen
        folder is ``self.run_dir``, also written into the config as ``work_dir``. With
        ``must_resume`` the run there must be continued (refused if its config differs).
        """
        self.cfg = cfg
        self.on_evaluate = on_evaluate
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.log = log if self.is_main else _silent
        self.run_id = new_run_id()  # a resume takes the checkpoint's
        self._claim_run_dir(Path(run_dir), must_resume)
        self.device = distributed.process_device(resolve_device(cfg.device))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed, cfg.deterministic)
        train = cfg.train

        # the model first: a missing pretrained file fails before the data is read
        self.model = build_model(cfg, log=self.log, device=self.device)
        self.train_set = build_dataset(cfg.data.train)
        self.val_set = build_dataset(cfg.data.val) if cfg.data.val is not None else None
        check_datasets(cfg, self.model, self.train_set, self.val_set)  # before any training
        # a mask detector (Mask R-CNN) gets gt_masks in its loss and is scored on segm too
        self.needs_masks = bool(getattr(self.model, "needs_masks", False))
        check_best_metric(cfg.eval, self.train_set.classes, self.needs_masks)
        if train.sync_bn and self.world_size > 1:
            self.model = distributed.convert_sync_batchnorm(self.model, self.device)
        self.model.to(self.device)
        if train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp_device = model_device(self.model)
        self.amp, why = resolve_amp(train.amp, self.amp_device, cfg.model.type)
        check_amp(self.amp, self.amp_device)
        self.log(f"precision: {_PRECISION_NAMES[self.amp]} ({why})")
        self.scaler = grad_scaler(self.amp, self.amp_device)
        self.compiled_loss = compile_loss(self.model, self.log) if train.compile else None
        self.accumulate = train.accumulate
        # data.batch_size is per process: one step sees batch_size · world_size · accumulate
        # images, the batch of the linear scaling rule (build.effective_batch).
        self.global_batch = cfg.data.batch_size * self.world_size
        self.optimizer = build_optimizer_for(cfg, self.model, self.world_size)
        self.base_lr = float(self.optimizer.defaults["lr"])  # build.base_lr: linear scaling
        self.ema = (
            ModelEMA(self.model, train.ema.decay, train.ema.tau) if train.ema is not None else None
        )
        self.early_stop = (
            EarlyStopping(**train.early_stop.model_dump()) if train.early_stop is not None else None
        )
        self.distiller = None
        if train.distill is not None:
            d = train.distill
            teacher = build_teacher(d.teacher_config, d.teacher_checkpoint, self.device)
            self.distiller = Distiller(teacher, d.temperature, d.weight, d.form)
            self.distiller.attach(self.model)
        self.ddp = distributed.wrap_ddp(self.model, self.device) if self.world_size > 1 else None
        self.step = OptimizerStep(
            self.model,
            self.optimizer,
            self._micro_losses,
            self.device,
            accumulate=self.accumulate,
            scaler=self.scaler,
            grad_clip=train.grad_clip,
            on_nonfinite=train.on_nonfinite,
            ddp=self.ddp,
            channels_last=train.channels_last,
        )
        self.hooks: list[Hook] = default_hooks(cfg)
        length = run_length(cfg, len(self.train_set), self.world_size)
        self.batches_per_epoch, self.iters_per_epoch = length[:2]
        self.max_iters = length.max_iters  # a wall-time budget alone: re-planned after 20 iters
        self.schedule = self.build_schedule()
        self.iteration = 0
        self.skipped_steps = 0
        self.time_budget: TimeBudget | None = None
        self.last_checkpoint: str | None = None
        self.best: dict[str, Any] | None = None  # {"metric", "value", "iteration"} of best.pt
        self.metrics_rows: int | None = 0  # metrics.jsonl rows at the checkpoint resumed from
        self._jsonl: JSONLLogger | None = None
        self.lr = self.base_lr
        self.metrics: dict[str, float] = {}
        self.stopping = False

    def _claim_run_dir(self, requested: Path, must_resume: bool) -> None:
        """Choose the run's folder (rank 0 decides for all); nothing is written yet."""
        chosen = None
        if self.is_main:
            resume = self.cfg.train.resume or must_resume
            chosen = choose_run_dir(requested, config_to_dict(self.cfg), resume, must_resume)
        chosen = distributed.broadcast_object(chosen)
        if chosen.note:
            self.log(f"run directory {chosen.path}: {chosen.note}")
        self.run_dir, self.ckpt_dir = chosen.path, chosen.path / "checkpoints"
        self.continues_run = chosen.resume
        self.cfg = self.cfg.model_copy(update={"work_dir": str(self.run_dir)})

    def build_schedule(self) -> LRSchedule:
        return build_schedule(self.cfg, self.base_lr, self.max_iters)

    @property
    def length_known(self) -> bool:
        """False for a wall-time budget before the first re-planning."""
        return self.max_iters < UNBOUNDED_ITERS

    @property
    def eval_model(self) -> nn.Module:
        """The model to evaluate: the EMA of the weights when enabled, else the model."""
        return self.ema.module if self.ema is not None else self.model

    # --- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {
            "iteration": self.iteration,
            "max_iters": self.max_iters,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "config": config_to_dict(self.cfg),
            "class_names": list(self.train_set.classes),
            "run_id": self.run_id,
            "best": self.best,
        }
        if self._jsonl is not None:
            state["metrics_rows"] = self._jsonl.rows
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.early_stop is not None:
            state["early_stop"] = self.early_stop.state_dict()
        return state

    def save(self) -> Path:
        """Write ``iter_<iteration>.pt`` (rank 0) and prune old ones. Called by every rank:
        the RNG states of all ranks are gathered into the checkpoint."""
        path = self._checkpoint_path()
        rng_ranks = distributed.gather_objects(rng_state())
        if self.is_main:
            state = self.state_dict()
            if self.world_size > 1:
                state["rng_ranks"] = rng_ranks
            save_checkpoint(path, state)
            link_checkpoint(path, self.run_dir / "last.pt")
            prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_checkpoints, self.run_id)
        self.last_checkpoint = str(path)
        return path

    def resume(self) -> bool:
        """Load the newest usable checkpoint of ``run_dir`` (``resume.resume_run``); False
        when there is none."""
        train = self.cfg.train
        return resume_run(self, time_budget=train.max_iters is None and train.epochs is None)

    # --- loop ----------------------------------------------------------------------------

    def _train_loader(self) -> DataLoader:
        # The global batch order of a 1-process run with batch_size · world_size; each rank
        # reads its own slice of every global batch (data.sampler: grouping, repeat factors).
        start = self.iteration * self.accumulate
        return train_loader(self.cfg, self.train_set, start, self.rank, self.world_size)

    def _micro_losses(self, batch: Any) -> dict[str, torch.Tensor]:
        """The loss terms of one batch (``step.DetectorLoss`` of the current parts)."""
        return DetectorLoss(
            self.model, self.amp, self.amp_device, self.ddp, self.distiller, self.compiled_loss
        )(batch)

    def _step(self, loader: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """One optimizer step over ``accumulate`` batches (``engine.step``); returns the mean
        loss terms and total, or None when a non-finite loss made the step be skipped."""
        return self.step(loader, self.iteration, self.last_checkpoint)

    def train(self) -> dict[str, float]:
        """Run to ``max_iters`` (or the time budget); returns the last evaluation's metrics.

        A SIGTERM or Ctrl-C saves a checkpoint at the end of the current iteration and
        raises ``TrainingInterrupted``; a non-finite loss raises ``NonFiniteLossError``
        (``train.on_nonfinite=stop``) or skips the step (``skip``, counted in
        ``skipped_steps``).
        """
        cfg = self.cfg.train
        if self.continues_run:
            self.run_id = saved_run_id(self.run_dir) or self.run_id
            self.resume()
        if self.is_main:  # after the resume decision, never over a file of another run
            write_run_config(self.run_dir, config_to_yaml(self.cfg), self.run_id)
            self._jsonl = JSONLLogger(
                self.run_dir / "metrics.jsonl", keep_rows=self.metrics_rows, note=self.log
            )
        self.loggers = MetricsLoggers(
            [self._jsonl, TensorBoardLogger(self.run_dir / "tb", purge_step=self.iteration + 1)]
            if self.is_main
            else []
        )
        # a bar on a terminal only: redrawn into a log file it leaves escape codes
        self.bar_shown = self.is_main and bars_enabled(cfg.progress)
        self.bar = tqdm(
            total=self.max_iters if self.length_known else None,
            initial=self.iteration,
            desc="train",
            disable=not self.bar_shown,
            dynamic_ncols=True,
        )
        try:
            with StopRequest() as stop:
                metrics = self._loop(stop)
        finally:
            self.bar.close()
            self.loggers.close()
        return metrics

    def _loop(self, stop: StopRequest) -> dict[str, float]:
        cfg = self.cfg.train
        start = time.monotonic()
        start_iter = self.iteration
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        self.time_budget = None  # a wall-time plan per run of the loop
        for hook in self.hooks:
            hook.before_train(self)
        self.model.train()
        loader = iter(self._train_loader())
        self.stopping = self.early_stop is not None and self.early_stop.stopped
        while self.iteration < self.max_iters and not self.stopping:
            if budget is not None and self._out_of_time(start, start_iter, budget):
                break
            for hook in self.hooks:
                hook.before_step(self)
            result = self._step(loader)
            if result is None:
                self.skipped_steps += 1
                self.log(f"skipped iteration {self.iteration}: non-finite loss")
            self.iteration += 1
            self.bar.update(1)
            for hook in self.hooks:
                hook.after_step(self, result)
            (signalled,) = distributed.any_over_ranks([stop.requested], self.device)
            if signalled:
                if self.last_checkpoint != str(self._checkpoint_path()):
                    self.save()
                signum = stop.signum if stop.signum is not None else signal.SIGTERM
                raise TrainingInterrupted(signum, self.iteration, self.last_checkpoint)
        if self.last_checkpoint != str(self._checkpoint_path()):  # the final one, once
            self.save()
        if self.skipped_steps:
            self.log(f"{self.skipped_steps} step(s) skipped for a non-finite loss")
        for hook in self.hooks:
            hook.after_train(self)
        if self.is_main and self.val_set is None:  # nothing to choose by: the final weights
            link_checkpoint(self.last_checkpoint, self.run_dir / "best.pt")
        if self.is_main:
            (self.run_dir / "metrics.json").write_text(json.dumps(self.metrics, indent=2))
        return self.metrics

    def _checkpoint_path(self) -> Path:
        return checkpoint_path(self.run_dir, self.iteration)

    def _out_of_time(self, start: float, start_iter: int, budget: float) -> bool:
        """True once ``budget`` seconds have passed; rank 0's clock decides for all ranks."""
        elapsed = distributed.broadcast_object(time.monotonic() - start)
        if self.cfg.train.max_iters is None and self.cfg.train.epochs is None:
            # The schedule's length, planned and re-planned from the speed (time_budget.py).
            if self.time_budget is None:
                self.time_budget = TimeBudget(budget)
            planned = self.time_budget.plan(self.iteration - start_iter, self.iteration, elapsed)
            if planned is not None and planned != self.max_iters:
                self.max_iters = planned
                self.schedule = self.build_schedule()
                self.bar.total = self.max_iters
        return elapsed >= budget

    # --- evaluation ----------------------------------------------------------------------

    def predict(self, dataset: Any) -> list[dict[str, Any]]:
        """COCO-format results of ``eval_model`` (EMA weights when enabled) on ``dataset``."""
        return predict_dataset(self.eval_model, dataset, eval_settings(self.cfg), self.device)

    def evaluate(self, dataset: Any = None) -> dict[str, float]:
        """Metrics of ``eval_model`` on ``dataset`` (default: the validation set); called by
        every rank (``evaluator.evaluate_model``)."""
        dataset = dataset or self.val_set
        return evaluate_model(
            self.eval_model,
            dataset,
            eval_settings(self.cfg),
            self.device,
            self.log,
            self.needs_masks,
        )
