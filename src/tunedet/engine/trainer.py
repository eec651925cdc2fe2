"""The training loop: a small trainer that ties the engine's parts together.

Iteration-based. Every ``ckpt_every`` iterations it writes an atomic
checkpoint (model, optimizer, iteration, RNG state); a re-run of the same
config in the same ``work_dir`` resumes from the latest one and continues
exactly: the batch order is a pure function of ``(seed, epoch)`` and each
sample's augmentation of ``(seed, epoch, index)``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tunedet.config.loader import config_to_yaml
from tunedet.config.registry import build
from tunedet.data.build import build_dataset, build_loader
from tunedet.data.samplers import EpochBatchSampler
from tunedet.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tunedet.engine.finite_guard import NonFiniteLossError, check_finite_loss, is_finite_loss
from tunedet.engine.lr_schedule import LRSchedule
from tunedet.engine.metrics_log import JSONLLogger, MetricsLoggers, TensorBoardLogger
from tunedet.engine.optim import build_optimizer, clip_gradients
from tunedet.evaluation import coco_evaluate, format_coco_table, voc_evaluate
from tunedet.models import build_detector


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


class Trainer:
    """Train one experiment config in ``run_dir``."""

    def __init__(self, cfg: Any, run_dir: str | Path, log: Any = print) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.log = log
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed, cfg.deterministic)

        self.train_set = build_dataset(cfg.data.train)
        self.val_set = build_dataset(cfg.data.val) if cfg.data.val is not None else None
        self.model = build_detector(cfg.model.model_dump()).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim.model_dump())
        self.base_lr = cfg.optim.lr
        self.iters_per_epoch = max(1, len(self.train_set) // cfg.data.batch_size)
        if cfg.train.max_iters is not None:
            self.max_iters = cfg.train.max_iters
        elif cfg.train.epochs is not None:
            self.max_iters = cfg.train.epochs * self.iters_per_epoch
        else:
            self.max_iters = 10**9  # wall-time budget only: re-planned after the first iterations
        self.schedule = self._build_schedule()
        self.iteration = 0
        self.skipped_steps = 0
        self.last_checkpoint: str | None = None

    def _build_schedule(self) -> LRSchedule:
        schedule = self.cfg.schedule
        policy = build("lr_policy", schedule.policy.model_dump(), max_iters=self.max_iters)
        warmup = build("warmup", schedule.warmup.model_dump(), max_iters=self.max_iters)
        return LRSchedule(self.base_lr, policy, warmup)

    # --- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "max_iters": self.max_iters,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "config": config_to_yaml(self.cfg),
        }

    def save(self) -> Path:
        path = self.ckpt_dir / f"iter_{self.iteration:07d}.pt"
        save_checkpoint(path, self.state_dict())
        self.last_checkpoint = str(path)
        old = sorted(self.ckpt_dir.glob("iter_*.pt"))[: -self.cfg.train.keep_checkpoints]
        for stale in old:
            stale.unlink(missing_ok=True)
        return path

    def resume(self) -> bool:
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        state = load_checkpoint(path, map_location=self.device)
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        time_budget = self.cfg.train.max_iters is None and self.cfg.train.epochs is None
        if time_budget and int(state.get("max_iters", self.max_iters)) != self.max_iters:
            self.max_iters = int(state["max_iters"])
            self.schedule = self._build_schedule()
        set_rng_state(state["rng"])
        self.last_checkpoint = str(path)
        self.log(f"resumed from {path} at iteration {self.iteration}")
        return True

    # --- loop ----------------------------------------------------------------------------

    def _train_loader(self) -> DataLoader:
        epoch, batch = divmod(self.iteration, self.iters_per_epoch)
        sampler = EpochBatchSampler(
            len(self.train_set),
            self.cfg.data.batch_size,
            seed=self.cfg.seed,
            start_epoch=epoch,
            start_batch=batch,
        )
        return build_loader(
            self.train_set,
            self.cfg.data.train_transforms,
            batch_sampler=sampler,
            seed=self.cfg.seed,
            num_workers=self.cfg.data.num_workers,
            size_divisor=self.cfg.data.size_divisor,
        )

    def train(self) -> dict[str, float]:
        cfg = self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(config_to_yaml(self.cfg))
        if cfg.resume:
            self.resume()
        loggers = MetricsLoggers(
            [JSONLLogger(self.run_dir / "metrics.jsonl"), TensorBoardLogger(self.run_dir / "tb")]
        )
        metrics: dict[str, float] = {}
        start = time.monotonic()
        start_iter = self.iteration
        budget = cfg.max_minutes * 60 if cfg.max_minutes else None
        bar = tqdm(
            total=self.max_iters if self.max_iters < 10**9 else None,
            initial=self.iteration,
            desc="train",
            disable=not cfg.progress,
            dynamic_ncols=True,
        )
        self.model.train()
        loader = iter(self._train_loader())
        try:
            while self.iteration < self.max_iters:
                if budget is not None and self._out_of_time(start, start_iter, budget, bar):
                    break
                batch = next(loader).to(self.device)
                lr = self.schedule.apply(self.optimizer, self.iteration)
                losses = self.model.loss(batch.images, batch.gt_boxes, batch.gt_labels)
                total = sum(losses.values())
                if not (is_finite_loss(losses) and torch.isfinite(total)):
                    if cfg.on_nonfinite == "stop":
                        check_finite_loss(
                            {**losses, "total": total}, self.iteration, self.last_checkpoint
                        )
                    self.skipped_steps += 1
                    self.log(f"skipped iteration {self.iteration}: non-finite loss")
                    self.optimizer.zero_grad(set_to_none=True)
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    if cfg.grad_clip is not None:
                        clip_gradients(self.model, cfg.grad_clip)
                    self.optimizer.step()
                self.iteration += 1
                bar.update(1)
                if self.iteration % cfg.log_every == 0 or self.iteration == self.max_iters:
                    row = {k: float(v.detach()) for k, v in losses.items()}
                    row.update(loss=float(total.detach()), lr=lr, time=time.monotonic() - start)
                    loggers.log(self.iteration, row)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k != "time"})
                if cfg.ckpt_every and self.iteration % cfg.ckpt_every == 0:
                    self.save()
                if cfg.eval_every and self.iteration % cfg.eval_every == 0 and self.val_set:
                    metrics = self.evaluate()
                    loggers.log(self.iteration, {f"val/{k}": v for k, v in metrics.items()})
                    self.model.train()
        except NonFiniteLossError:
            bar.close()
            loggers.close()
            raise
        bar.close()
        self.save()
        if self.val_set is not None and not (
            cfg.eval_every and self.iteration % cfg.eval_every == 0
        ):
            metrics = self.evaluate()
            loggers.log(self.iteration, {f"val/{k}": v for k, v in metrics.items()})
        loggers.close()
        (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics

    def _out_of_time(self, start: float, start_iter: int, budget: float, bar: tqdm) -> bool:
        elapsed = time.monotonic() - start
        done = self.iteration - start_iter
        if self.cfg.train.max_iters is None and self.cfg.train.epochs is None and done == 20:
            # Re-plan the schedule's length once from the measured speed.
            per_iter = elapsed / done
            self.max_iters = self.iteration + max(1, int((budget - elapsed) / per_iter))
            self.schedule = self._build_schedule()
            bar.total = self.max_iters
        return elapsed >= budget

    # --- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, dataset: Any) -> list[dict[str, Any]]:
        """COCO-format results for ``dataset`` (boxes in original image pixels)."""
        return predict_dataset(self.model, dataset, self.cfg, self.device)

    def evaluate(self, dataset: Any = None) -> dict[str, float]:
        dataset = dataset or self.val_set
        results = self.predict(dataset)
        metrics = evaluate_results(dataset.coco_ground_truth(), results, self.cfg.eval.metric)
        if self.cfg.eval.metric == "coco":
            self.log(format_coco_table(metrics))
        else:
            self.log(json.dumps(metrics))
        return metrics


@torch.no_grad()
def predict_dataset(model: Any, dataset: Any, cfg: Any, device: torch.device) -> list[dict]:
    from tunedet.evaluation import detections_to_coco_results

    loader = build_loader(
        dataset,
        cfg.data.val_transforms,
        batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers,
        size_divisor=cfg.data.size_divisor,
    )
    gt = dataset.coco_ground_truth()
    label_to_category = sorted(c["id"] for c in gt["categories"])
    model.eval()
    results: list[dict] = []
    for batch in tqdm(loader, desc="eval", leave=False, disable=not cfg.train.progress):
        batch = batch.to(device)
        predictions = model.predict(batch.images, batch.image_sizes)
        if cfg.eval.score_thr is not None:
            predictions = [
                {k: v[p["scores"] >= cfg.eval.score_thr] for k, v in p.items()} for p in predictions
            ]
        results.extend(
            detections_to_coco_results(
                predictions,
                [m["image_id"] for m in batch.metas],
                [m["scale"] for m in batch.metas],
                label_to_category,
            )
        )
    return results


def evaluate_results(gt: dict, results: list[dict], metric: str) -> dict[str, float]:
    if metric == "coco":
        return coco_evaluate(gt, results)
    summary = voc_evaluate(gt, results, iou_thr=0.5, use_07_metric=metric == "voc07")
    out = {"mAP": float(summary["mAP"])}
    out.update({f"AP/{name}": float(ap) for name, ap in summary["per_class"].items()})
    return out
