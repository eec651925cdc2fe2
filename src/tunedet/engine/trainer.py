"""The training loop: a small trainer that ties the engine's parts together.

Iteration-based; one iteration is one optimizer step over ``train.accumulate``
batches (each loss divided by ``accumulate``, so the gradient is the mean over the
effective batch ``batch_size · accumulate`` when the loss is a per-image mean).
Every ``ckpt_every`` iterations it writes an atomic checkpoint (model, optimizer,
EMA, loss scaler, early-stopping state, iteration, RNG state); a re-run of the same
config in the same ``work_dir`` resumes from the latest one and continues exactly:
the batch order is a pure function of ``(seed, epoch)`` and each sample's
augmentation of ``(seed, epoch, index)``.

Optional parts, each in its own module: the LR schedule and Detectron's momentum
correction (``lr_schedule``), EMA of the weights used for evaluation (``ema``),
mixed precision (``amp``), distillation from a frozen teacher (``distill``),
early stopping on the validation metric (counted in evaluations).

Under ``torchrun`` (``distributed``) the same loop runs in every process: each
takes its slice of the global batch ``batch_size · world_size``, DDP averages the
gradients, rank 0 alone logs, shows progress and writes checkpoints, and evaluation
predicts one shard of the validation batches per rank and scores their union on
rank 0. Faults: a SIGTERM or Ctrl-C saves a checkpoint at the end of the current
iteration, then raises ``TrainingInterrupted`` (``interrupt``); a resume skips a
latest checkpoint that is truncated or foreign, naming it, and takes the previous one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from tunedet.config.loader import config_to_yaml
from tunedet.config.registry import build
from tunedet.data.build import build_dataset, build_loader, build_train_sampler
from tunedet.data.classes import check_dataset_classes, resolve_num_classes
from tunedet.engine import distributed
from tunedet.engine.amp import autocast, check_amp, grad_scaler, model_device
from tunedet.engine.checkpoint import (
    CheckpointError,
    checkpoints_newest_first,
    config_to_dict,
    link_checkpoint,
    load_checkpoint,
    load_model_state,
    new_run_id,
    prune_checkpoints,
    remove_stale_temp_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tunedet.engine.distill import Distiller, build_teacher
from tunedet.engine.ema import ModelEMA
from tunedet.engine.finite_guard import check_finite_loss, is_finite_loss
from tunedet.engine.interrupt import StopRequest, TrainingInterrupted
from tunedet.engine.lr_schedule import (
    LRChangeLog,
    LRSchedule,
    MomentumCorrection,
    policy_max_iters,
)
from tunedet.engine.metrics_log import JSONLLogger, MetricsLoggers, TensorBoardLogger
from tunedet.engine.optim import apply_l1_penalty, build_optimizer, clip_gradients
from tunedet.engine.run_dir import choose_run_dir, saved_run_id, write_run_config
from tunedet.engine.sliced_inference import sliced_predict_dataset
from tunedet.engine.time_budget import TimeBudget
from tunedet.evaluation import COCO_STAT_NAMES, coco_evaluate, format_coco_table, voc_evaluate
from tunedet.models import build_detector
from tunedet.models.build import check_model_memory
from tunedet.models.detectors import loss_extras
from tunedet.models.pretrained import init_detector


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def schedule_from_config(cfg: Any, base_lr: float, max_iters: int) -> LRSchedule:
    """The run's ``LRSchedule`` (``schedule.warmup`` × ``schedule.policy``) over ``max_iters``."""
    warmup = build("warmup", cfg.schedule.warmup.model_dump(), max_iters=max_iters)
    policy = build(
        "lr_policy",
        cfg.schedule.policy.model_dump(),
        max_iters=policy_max_iters(warmup, max_iters),
        base_lr=base_lr,
    )
    return LRSchedule(base_lr, policy, warmup)


class EarlyStopping:
    """Counts evaluations without an improvement of one metric; ``stopped`` after ``patience``."""

    def __init__(self, metric: str, patience: int, mode: str = "max", min_delta: float = 0.0):
        self.metric = metric
        self.patience = patience
        self.mode = mode
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_iteration: int | None = None
        self.bad_evals = 0
        self.stopped = False

    def update(self, metrics: dict[str, float], iteration: int) -> bool:
        """Record one evaluation; True when training should stop."""
        if self.metric not in metrics:
            raise KeyError(
                f"train.early_stop.metric '{self.metric}' is not an evaluation metric "
                f"(available: {', '.join(sorted(metrics))})"
            )
        value = float(metrics[self.metric])
        sign = 1.0 if self.mode == "max" else -1.0
        if math.isfinite(value) and (
            self.best is None or sign * (value - self.best) > self.min_delta
        ):
            self.best, self.best_iteration, self.bad_evals = value, iteration, 0
        else:
            self.bad_evals += 1
        self.stopped = self.bad_evals >= self.patience
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_iteration": self.best_iteration,
            "bad_evals": self.bad_evals,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_iteration = state["best_iteration"]
        self.bad_evals = int(state["bad_evals"])
        self.stopped = bool(state["stopped"])


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """The log of ranks other than 0."""


def _no_context() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class Trainer:
    """Train one experiment config in ``run_dir`` (in every process of a torchrun job)."""

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

        if cfg.model.num_classes is None:  # a config validated without load_config
            resolve_num_classes(cfg)
        check_model_memory(cfg.model.model_dump(), self.device)  # before allocating it
        # the model first: a missing pretrained file fails before the data is read
        self.model = build_detector(cfg.model.model_dump())
        init_detector(self.model, cfg.load_from, cfg.freeze, log=self.log)  # pretrained.py
        self.train_set = build_dataset(cfg.data.train)
        self.val_set = build_dataset(cfg.data.val) if cfg.data.val is not None else None
        check_dataset_classes(cfg, self.train_set, self.val_set)  # before any training
        # a mask detector (Mask R-CNN) gets gt_masks in its loss and is scored on segm too
        self.needs_masks = bool(getattr(self.model, "needs_masks", False))
        if self.needs_masks:
            check_datasets_have_masks(cfg, self.train_set, self.val_set)
        check_best_metric(cfg.eval, self.train_set.classes, self.needs_masks)
        if train.sync_bn and self.world_size > 1:
            self.model = distributed.convert_sync_batchnorm(self.model, self.device)
        self.model.to(self.device)
        if train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.amp_device = model_device(self.model)
        check_amp(train.amp, self.amp_device)
        self.scaler = grad_scaler(train.amp, self.amp_device)
        self.accumulate = train.accumulate
        # data.batch_size is per process: one step sees batch_size · world_size · accumulate
        # images, the batch of the linear scaling rule.
        self.global_batch = cfg.data.batch_size * self.world_size
        self.optimizer = build_optimizer(
            self.model, cfg.optim.model_dump(), batch_size=self.global_batch * self.accumulate
        )
        self.base_lr = float(self.optimizer.defaults["lr"])  # after the linear scaling rule
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
        self.momentum_correction = (
            MomentumCorrection(cfg.schedule.scale_momentum_threshold)
            if cfg.schedule.scale_momentum
            else None
        )
        self.lr_log = LRChangeLog(train.log_lr_change) if train.log_lr_change is not None else None

        self.batches_per_epoch = max(1, len(self.train_set) // self.global_batch)
        self.iters_per_epoch = max(1, self.batches_per_epoch // self.accumulate)
        if train.max_iters is not None:
            self.max_iters = train.max_iters
        elif train.epochs is not None:
            self.max_iters = max(1, train.epochs * self.batches_per_epoch // self.accumulate)
        else:
            self.max_iters = 10**9  # wall-time budget only: re-planned after the first iterations
        self.schedule = self._build_schedule()
        self.iteration = 0
        self.skipped_steps = 0
        self.time_budget: TimeBudget | None = None
        self.last_checkpoint: str | None = None
        self.best: dict[str, Any] | None = None  # {"metric", "value", "iteration"} of best.pt
        self._metrics_rows: int | None = 0  # metrics.jsonl rows at the checkpoint resumed from
        self._jsonl: JSONLLogger | None = None

    def _claim_run_dir(self, requested: Path, must_resume: bool) -> None:
        """Choose the run's folder (rank 0 decides for all); nothing is written yet."""
        chosen = None
        if self.is_main:
            resume = self.cfg.train.resume or must_resume
            chosen = choose_run_dir(requested, config_to_dict(self.cfg), resume, must_resume)
        chosen = distributed.broadcast_object(chosen)
        if chosen.note:
            self.log(f"run directory {chosen.path}: {chosen.note}")
        self.run_dir = chosen.path
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.continues_run = chosen.resume
        self.cfg = self.cfg.model_copy(update={"work_dir": str(self.run_dir)})

    def _build_schedule(self) -> LRSchedule:
        return schedule_from_config(self.cfg, self.base_lr, self.max_iters)

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
        """Load the newest usable checkpoint of ``run_dir``; False when there is none.

        A checkpoint that is truncated, corrupt, not a checkpoint of this run's model,
        or holds pickled objects is skipped with one line naming it, and the previous
        one is tried; ``CheckpointError`` when checkpoints exist but none is usable.
        """
        if self.is_main:
            remove_stale_temp_files(self.ckpt_dir)
            remove_stale_temp_files(self.run_dir)  # of last.pt, best.pt
        candidates = checkpoints_newest_first(self.ckpt_dir)
        for path in candidates:
            try:
                self._load_checkpoint(path)
            except CheckpointError as err:
                self.log(f"skipping bad checkpoint: {err}")
                continue
            self.log(f"resumed from {path} at iteration {self.iteration}")
            return True
        if candidates:
            raise CheckpointError(
                f"no usable checkpoint in {self.ckpt_dir} ({len(candidates)} found, all bad): "
                "move them away or set train.resume=false"
            )
        return False

    def _load_checkpoint(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        required = {"iteration": int, "model": dict, "optimizer": dict, "rng": dict}
        for key, kind in required.items():
            if not isinstance(state.get(key), kind):
                raise CheckpointError(
                    f"checkpoint {path} is not a training checkpoint (no '{key}' entry)"
                )
        load_model_state(self.model, state["model"], source=path)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.ema is not None:
                if "ema" in state:
                    self.ema.load_state_dict(state["ema"])
                else:  # EMA switched on for a run that had none: start it from the weights
                    self.ema = ModelEMA(self.model, self.ema.decay, self.ema.tau)
            if self.scaler is not None and "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            if self.early_stop is not None and "early_stop" in state:
                self.early_stop.load_state_dict(state["early_stop"])
            rng = state["rng"]
            ranks = state.get("rng_ranks")
            if isinstance(ranks, list) and len(ranks) == self.world_size:
                rng = ranks[self.rank]
            set_rng_state(rng)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise CheckpointError(f"checkpoint {path} does not fit this run ({reason})") from None
        self.iteration = state["iteration"]
        self.run_id = str(state.get("run_id") or self.run_id)
        self.best = state.get("best") if isinstance(state.get("best"), dict) else None
        rows = state.get("metrics_rows")
        self._metrics_rows = int(rows) if isinstance(rows, int) else None
        time_budget = self.cfg.train.max_iters is None and self.cfg.train.epochs is None
        if time_budget and int(state.get("max_iters", self.max_iters)) != self.max_iters:
            self.max_iters = int(state["max_iters"])
            self.schedule = self._build_schedule()
        self.last_checkpoint = str(path)

    # --- loop ----------------------------------------------------------------------------

    def _train_loader(self) -> DataLoader:
        # The global batch order of a 1-process run with batch_size · world_size; each rank
        # reads its own slice of every global batch (data.sampler: grouping, repeat factors).
        sampler = build_train_sampler(
            self.cfg.data,
            self.train_set,
            seed=self.cfg.seed,
            start_batch=self.iteration * self.accumulate,
            rank=self.rank,
            world_size=self.world_size,
        )
        return build_loader(
            self.train_set,
            self.cfg.data.train_transforms,
            batch_sampler=sampler,
            seed=self.cfg.seed,
            num_workers=self.cfg.data.num_workers,
            size_divisor=self.cfg.data.size_divisor,
        )

    def _set_lr(self) -> float:
        """Apply the schedule for this iteration (and the momentum correction); returns lr."""
        lr = self.schedule.apply(self.optimizer, self.iteration)
        if self.momentum_correction is not None and self.iteration > 0:
            previous = self.schedule.lr_at(self.iteration - 1)
            self.momentum_correction.apply(self.optimizer, previous, lr)
        if self.lr_log is not None and self.lr_log.changed(lr):
            self.log(f"iteration {self.iteration}: lr {lr:.6g}")
        return lr

    def _micro_losses(self, batch: Any) -> dict[str, torch.Tensor]:
        compute = self.ddp if self.ddp is not None else self.model.loss
        extras = loss_extras(self.model, batch)
        with autocast(self.cfg.train.amp, self.amp_device):
            losses = compute(batch.images, batch.gt_boxes, batch.gt_labels, **extras)
            if self.distiller is not None:
                losses = {**losses, "distill": self.distiller.loss(batch.images)}
        return losses

    def _step(self, loader: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """One optimizer step over ``accumulate`` batches; returns the mean loss terms and
        total, or None when a non-finite loss made the step be skipped."""
        cfg = self.cfg.train
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for micro in range(self.accumulate):
            batch = next(loader).to(self.device)
            if cfg.channels_last:
                batch = replace(
                    batch, images=batch.images.contiguous(memory_format=torch.channels_last)
                )
            # DDP averages gradients only on the last backward of the step.
            last = micro == self.accumulate - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else _no_context()
            with sync:
                losses = self._micro_losses(batch)
                total = sum(losses.values())
                finite = is_finite_loss(losses) and bool(torch.isfinite(total))
                # every rank must skip (or stop) together, or the others wait forever
                (bad_somewhere,) = distributed.any_over_ranks([not finite], self.device)
                if bad_somewhere:
                    if cfg.on_nonfinite == "stop":
                        terms = {**losses, "total": total}
                        if finite:  # another rank's loss: name it in the report
                            terms = {"total": total.new_tensor(math.nan)}
                        check_finite_loss(terms, self.iteration, self.last_checkpoint)
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                scaled = total / self.accumulate
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value.detach() / self.accumulate
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        apply_l1_penalty(self.optimizer)
        if cfg.grad_clip is not None:
            clip_gradients(self.model, cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return sums, sum(sums.values())

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
                self.run_dir / "metrics.jsonl", keep_rows=self._metrics_rows, note=self.log
            )
        loggers = MetricsLoggers(
            [self._jsonl, TensorBoardLogger(self.run_dir / "tb", purge_step=self.iteration + 1)]
            if self.is_main
            else []
        )
        bar = tqdm(
            total=self.max_iters if self.max_iters < 10**9 else None,
            initial=self.iteration,
            desc="train",
            disable=not (cfg.progress and self.is_main),
            dynamic_ncols=True,
        )
        try:
            with StopRequest() as stop:
                metrics = self._loop(loggers, bar, stop)
        finally:
            bar.close()
            loggers.close()
        return metrics

    def _loop(self, loggers: MetricsLoggers, bar: tqdm, stop: StopRequest) -> dict[str, float]:
        cfg = self.cfg.train
        metrics: dict[str, float] = {}
        evaluated_at: int | None = None
        start = time.monotonic()
        start_iter = self.iteration
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        self.time_budget = None  # a wall-time plan per run of the loop
        self.model.train()
        loader = iter(self._train_loader())
        stopping = self.early_stop is not None and self.early_stop.stopped
        while self.iteration < self.max_iters and not stopping:
            if budget is not None and self._out_of_time(start, start_iter, budget, bar):
                break
            lr = self._set_lr()
            result = self._step(loader)
            if result is None:
                self.skipped_steps += 1
                self.log(f"skipped iteration {self.iteration}: non-finite loss")
            self.iteration += 1
            bar.update(1)
            if result is not None and (
                self.iteration % cfg.log_every == 0 or self.iteration == self.max_iters
            ):
                # the mean over ranks of each rank's terms is the global batch's loss
                losses = {k: float(distributed.reduce_mean(v)) for k, v in result[0].items()}
                row = {**losses, "loss": sum(losses.values())}
                row.update(lr=lr, time=time.monotonic() - start, skipped=self.skipped_steps)
                loggers.log(self.iteration, row)
                bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k != "time"})
            evaluate_now = cfg.eval_every and self.iteration % cfg.eval_every == 0
            if evaluate_now and self.val_set:
                metrics = self.evaluate()
                evaluated_at = self.iteration
                loggers.log(self.iteration, {f"val/{k}": v for k, v in metrics.items()})
                self._update_best(metrics)
                self.model.train()
                if self.on_evaluate is not None:
                    pruned = self.is_main and bool(self.on_evaluate(self.iteration, metrics))
                    if distributed.broadcast_object(pruned):
                        stopping = True
                        self.log(f"stopped at iteration {self.iteration} by on_evaluate")
                if self.early_stop is not None and self.early_stop.update(metrics, self.iteration):
                    stopping = True
                    es = self.early_stop
                    self.log(
                        f"early stop at iteration {self.iteration}: no {es.metric} "
                        f"improvement in {es.patience} evaluations (best {es.best:.4g} "
                        f"at iteration {es.best_iteration})"
                    )
            if cfg.ckpt_every and self.iteration % cfg.ckpt_every == 0:
                self.save()
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
        if self.val_set is not None and evaluated_at != self.iteration:
            metrics = self.evaluate()
            loggers.log(self.iteration, {f"val/{k}": v for k, v in metrics.items()})
            self._update_best(metrics)
        if self.is_main and self.val_set is None:  # nothing to choose by: the final weights
            link_checkpoint(self.last_checkpoint, self.run_dir / "best.pt")
        if self.is_main:
            (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics

    def _update_best(self, metrics: dict[str, float]) -> None:
        """Write ``best.pt`` (the weights, config and class names, no optimizer) when the
        validation metric ``eval.best_metric`` beats every earlier evaluation."""
        name = best_metric(self.cfg.eval)
        if name not in metrics:  # checked at the start (check_best_metric); a custom evaluate
            return
        value = float(metrics[name])
        if not math.isfinite(value) or (self.best is not None and value <= self.best["value"]):
            return
        self.best = {"metric": name, "value": value, "iteration": self.iteration}
        if self.is_main:
            state = self.state_dict()
            for key in ("optimizer", "rng", "scaler", "early_stop", "metrics_rows"):
                state.pop(key, None)
            save_checkpoint(self.run_dir / "best.pt", state)

    def _checkpoint_path(self) -> Path:
        return self.ckpt_dir / f"iter_{self.iteration:07d}.pt"

    def _out_of_time(self, start: float, start_iter: int, budget: float, bar: tqdm) -> bool:
        """True once ``budget`` seconds have passed; rank 0's clock decides for all ranks."""
        elapsed = distributed.broadcast_object(time.monotonic() - start)
        if self.cfg.train.max_iters is None and self.cfg.train.epochs is None:
            # The schedule's length, planned and re-planned from the speed (time_budget.py).
            if self.time_budget is None:
                self.time_budget = TimeBudget(budget)
            planned = self.time_budget.plan(self.iteration - start_iter, self.iteration, elapsed)
            if planned is not None and planned != self.max_iters:
                self.max_iters = planned
                self.schedule = self._build_schedule()
                bar.total = self.max_iters
        return elapsed >= budget

    # --- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, dataset: Any) -> list[dict[str, Any]]:
        """COCO-format results for ``dataset`` (boxes in original image pixels), predicted
        by ``eval_model`` (the EMA weights when enabled) in this process alone."""
        return predict_dataset(self.eval_model, dataset, self.cfg, self.device)

    def evaluate(self, dataset: Any = None) -> dict[str, float]:
        """Metrics of ``eval_model`` on ``dataset`` (default: the validation set). Called by
        every rank: each predicts its shard of the batches, rank 0 scores their union
        (the same results, in the same order, as a 1-process run) and shares the metrics."""
        dataset = dataset or self.val_set
        shard = predict_dataset(
            self.eval_model, dataset, self.cfg, self.device, self.rank, self.world_size
        )
        results = merge_shards(distributed.gather_objects(shard)) if self.world_size > 1 else shard
        metrics = None
        if self.is_main:
            metrics = evaluate_results(
                dataset.coco_ground_truth(), results, self.cfg.eval.metric, self.needs_masks
            )
            if self.cfg.eval.metric == "coco":
                self.log(format_coco_table(metrics))
            else:
                self.log(json.dumps({k: v for k, v in metrics.items() if k[:5] != "segm_"}))
            if self.needs_masks:
                segm = {k[5:]: v for k, v in metrics.items() if k[:5] == "segm_"}
                self.log("segm:\n" + format_coco_table(segm))
        return distributed.broadcast_object(metrics)


def best_metric(eval_cfg: Any) -> str:
    """The validation metric ``best.pt`` is chosen by: ``eval.best_metric``, else AP
    (``eval.metric: coco``) or mAP (``voc07``, ``voc12``); higher is better."""
    if eval_cfg.best_metric is not None:
        return eval_cfg.best_metric
    return "AP" if eval_cfg.metric == "coco" else "mAP"


def check_best_metric(eval_cfg: Any, classes: list[str], masks: bool) -> None:
    """One line when ``eval.best_metric`` names no metric that ``eval.metric`` reports."""
    if eval_cfg.metric == "coco":
        names = list(COCO_STAT_NAMES) + ([f"segm_{n}" for n in COCO_STAT_NAMES] if masks else [])
    else:
        names = ["mAP", *(f"AP/{name}" for name in classes)]
    if best_metric(eval_cfg) not in names:
        raise ValueError(
            f"eval.best_metric '{eval_cfg.best_metric}' is not a metric of "
            f"eval.metric={eval_cfg.metric} (one of: {', '.join(names[:14])})"
        )


def check_datasets_have_masks(cfg: Any, train_set: Any, val_set: Any) -> None:
    """One line when a mask detector is given a dataset whose samples carry no masks (a
    dataset with masks has ``masks = True``: ``synthetic`` / ``coco`` with ``masks: true``),
    or sliced evaluation (which merges boxes, not masks)."""
    for key, dataset in (("data.train", train_set), ("data.val", val_set)):
        if dataset is not None and not getattr(dataset, "masks", False):
            kind = getattr(cfg.data, key.split(".")[1]).type
            raise ValueError(
                f"model.type {cfg.model.type} trains on instance masks, but {key} "
                f"({kind}) has none: set {key}.masks=true (datasets synthetic, coco)"
            )
    if cfg.eval.sliced is not None:
        raise ValueError(
            f"eval.sliced merges boxes only, not the masks of model.type {cfg.model.type}: "
            "set eval.sliced=null"
        )


def evaluation_batches(num_images: int, batch_size: int, rank: int, world_size: int) -> list:
    """Batch ``b`` of the sequential order (``batch_size`` images) goes to rank
    ``b % world_size``: each batch is padded and predicted exactly as in 1 process."""
    starts = range(rank * batch_size, num_images, world_size * batch_size)
    return [list(range(s, min(s + batch_size, num_images))) for s in starts]


def merge_shards(shards: list[list[dict]]) -> list[dict]:
    """The union of the ranks' ``predict_dataset`` shards in 1-process order: rank ``r``'s
    ``k``-th batch is global batch ``k · world_size + r``."""
    world = len(shards)
    by_batch: dict[int, list[dict]] = {}
    for r, shard in enumerate(shards):
        for result in shard:
            by_batch.setdefault(result["_batch"] * world + r, []).append(result)
    return [
        {k: v for k, v in result.items() if k != "_batch"}
        for b in sorted(by_batch)
        for result in by_batch[b]
    ]


@torch.no_grad()
def predict_dataset(
    model: Any,
    dataset: Any,
    cfg: Any,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> list[dict]:
    """COCO-format results of ``model`` on ``dataset`` (sequential batches of
    ``data.val_batch_size``). With ``world_size > 1`` only this rank's batches
    (``evaluation_batches``), each result tagged ``_batch`` (its local batch number)
    for ``merge_shards``."""
    from tunedet.engine.test_time_augmentation import with_tta
    from tunedet.evaluation import detections_to_coco_results

    model = with_tta(model, cfg)  # eval.tta: the image's flips too, merged
    if cfg.eval.sliced is not None:  # whole images through tiles (engine/sliced_inference.py)
        return sliced_predict_dataset(model, dataset, cfg, device, rank, world_size)
    batch_size = cfg.data.val_batch_size or cfg.data.batch_size
    common = dict(
        seed=cfg.seed, num_workers=cfg.data.num_workers, size_divisor=cfg.data.size_divisor
    )
    if world_size > 1:
        batches = evaluation_batches(len(dataset), batch_size, rank, world_size)
        loader = build_loader(dataset, cfg.data.val_transforms, batch_sampler=batches, **common)
    else:
        loader = build_loader(dataset, cfg.data.val_transforms, batch_size=batch_size, **common)
    gt = dataset.coco_ground_truth()
    label_to_category = sorted(c["id"] for c in gt["categories"])
    model.eval()
    results: list[dict] = []
    show = cfg.train.progress and rank == 0
    for index, batch in enumerate(tqdm(loader, desc="eval", leave=False, disable=not show)):
        batch = batch.to(device)
        predictions = model.predict(batch.images, batch.image_sizes)
        if cfg.eval.score_thr is not None:
            predictions = [
                {k: v[p["scores"] >= cfg.eval.score_thr] for k, v in p.items()} for p in predictions
            ]
        batch_results = detections_to_coco_results(
            predictions,
            [m["image_id"] for m in batch.metas],
            [m["scale"] for m in batch.metas],
            label_to_category,
            orig_sizes=[m["orig_size"] for m in batch.metas],
        )
        if world_size > 1:
            batch_results = [{**r, "_batch": index} for r in batch_results]
        results.extend(batch_results)
    return results


def evaluate_results(
    gt: dict, results: list[dict], metric: str, segm: bool = False
) -> dict[str, float]:
    """The box metrics of ``eval.metric`` (COCO's 12 stats, or VOC mAP and AP per class);
    with ``segm`` (a mask detector's results) also the 12 COCO mask stats as ``segm_AP``,
    ``segm_AP50``, ..."""
    if metric == "coco":
        out = coco_evaluate(gt, results)
    else:
        summary = voc_evaluate(gt, results, iou_thr=0.5, use_07_metric=metric == "voc07")
        out = {"mAP": float(summary["mAP"])}
        out.update({f"AP/{name}": float(ap) for name, ap in summary["per_class"].items()})
    if segm:
        stats = coco_evaluate(gt, results, iou_type="segm")
        out.update({f"segm_{name}": value for name, value in stats.items()})
    return out
