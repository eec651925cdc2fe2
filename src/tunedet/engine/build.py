"""Where a config becomes engine objects; the objects themselves never read the config.

One function per object: the device and the seed, the detector (fresh, or with a
checkpoint's weights: ``model_from_checkpoint``, the loader every command uses), the
effective batch and base LR (the linear scaling rule, Goyal et al. 2017), the run
length, the optimizer, the LR schedule, the training and evaluation loaders, and the
evaluation's settings (``eval_settings``).

The effective batch of one optimizer step is ``data.batch_size · world_size ·
train.accumulate`` (``data.batch_size`` is per process); with ``optim.auto_scale_lr``
the base LR is ``optim.lr · effective_batch / optim.base_batch``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tunedet.config.loader import apply_override, load_config, validate
from tunedet.data.build import build_loader, build_train_sampler
from tunedet.data.classes import check_dataset_classes, resolve_num_classes
from tunedet.engine.best_checkpoint import best_metric
from tunedet.engine.checkpoint import (
    checkpoint_class_names,
    checkpoint_config,
    load_checkpoint,
    load_model_state,
)
from tunedet.engine.evaluator import EvalSettings
from tunedet.engine.hooks import (
    CheckpointHook,
    EMAHook,
    EvalHook,
    Hook,
    LRScheduleHook,
    MetricsLogHook,
)
from tunedet.engine.lr_schedule import (
    LRChangeLog,
    LRSchedule,
    MomentumCorrection,
    build_lr_schedule,
)
from tunedet.engine.optim import build_optimizer, linear_scaled_lr
from tunedet.models import build_detector
from tunedet.models.build import check_model_memory
from tunedet.models.channel_pruning import restore_pruned_structure
from tunedet.models.pretrained import init_detector, skip_backbone_init

UNBOUNDED_ITERS = 10**9  # a wall-time budget alone: the trainer re-plans after 20 iterations


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA, else Apple MPS, else CPU; any other name as given."""
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


# --- the model ---------------------------------------------------------------------------


def build_model(cfg: Any, log: Any = print, device: torch.device | None = None) -> nn.Module:
    """The config's detector for training: ``load_from`` weights and ``freeze`` applied;
    ``model.num_classes`` unset (a config validated without ``load_config``) is taken
    from the training data first. With ``device``, a model whose training state would not
    fit its memory is refused before anything is allocated."""
    if cfg.model.num_classes is None:
        resolve_num_classes(cfg)
    if device is not None:
        check_model_memory(cfg.model.model_dump(), device)
    model = build_detector(cfg.model.model_dump())
    init_detector(model, cfg.load_from, cfg.freeze, log=log)
    return model


def checkpoint_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The weights a checkpoint is evaluated with: the EMA of the weights when the run kept
    one (as training evaluates), else ``model`` (or the dict itself: a bare state dict)."""
    ema = state.get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("model"), dict):
        return ema["model"]
    return state.get("model", state)


def config_from_checkpoint(state: dict[str, Any], path: str | Path, overrides: Any = ()) -> Any:
    """The validated config that checkpoint ``state`` carries, with dotted ``overrides``
    applied; ``CheckpointError`` naming ``path`` when it carries none."""
    raw = checkpoint_config(state, path)
    # The device a run trained on is not the reader's: a checkpoint trained on a GPU
    # loads on a CPU-only machine (``device=...`` among the overrides still wins).
    raw["device"] = "auto"
    # ``data=PATH`` first, as load_config does: it sets model.num_classes
    first = [o for o in overrides if o.split("=", 1)[0].strip() == "data"]
    for override in [*first, *(o for o in overrides if o not in first)]:
        apply_override(raw, override)
    source = f"{path} (its config)"
    cfg = validate(raw, source=source)
    resolve_num_classes(cfg, source=source)
    return cfg


def config_for_checkpoint(
    checkpoint: str | Path, config: str | Path | None = None, overrides: Any = ()
) -> Any:
    """The config of ``checkpoint``: ``config`` (a path or built-in name) when given, else
    the one the checkpoint carries; dotted ``overrides`` applied."""
    if config is not None:
        return load_config(str(config), list(overrides))
    return config_from_checkpoint(load_checkpoint(checkpoint), checkpoint, overrides)


def model_from_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    overrides: list[str] | tuple[str, ...] | None = None,
    cfg: Any = None,
) -> tuple[nn.Module, Any]:
    """``(model, cfg)``: the detector of a checkpoint in eval mode on ``device``, with the
    EMA weights when the checkpoint has them (``checkpoint_weights``).

    The architecture comes from ``cfg`` when given (a config file named on the command
    line), else from the config the checkpoint carries, with ``overrides`` applied.
    ``model.classes`` holds the class names the checkpoint saved (None when it has none).
    Every weight comes from the checkpoint: ``backbone.init`` is not loaded.
    """
    state = load_checkpoint(path, map_location=device)
    if cfg is None:
        cfg = config_from_checkpoint(state, path, overrides or ())
    model = build_detector(skip_backbone_init(cfg.model.model_dump()))
    restore_pruned_structure(model, state)  # a tunedet prune checkpoint: its narrower convs
    model = model.to(device)
    load_model_state(model, checkpoint_weights(state), source=path)
    model.classes = checkpoint_class_names(state)
    model.eval()
    return model, cfg


def check_datasets(cfg: Any, model: nn.Module, train_set: Any, val_set: Any) -> None:
    """Refuse, in one line, datasets whose classes contradict ``model.num_classes``, and
    datasets without masks for a mask detector."""
    check_dataset_classes(cfg, train_set, val_set)
    if getattr(model, "needs_masks", False):
        check_datasets_have_masks(cfg, train_set, val_set)


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


def model_on_device(cfg: Any, path: str | Path) -> tuple[nn.Module, torch.device]:
    """``(model, device)``: ``model_from_checkpoint`` on the config's ``device`` (``auto``
    resolved), with ``threads`` applied: what eval, infer, export and the API use."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    return model_from_checkpoint(path, device, cfg=cfg)[0], device


# --- batch, learning rate, run length ----------------------------------------------------


def effective_batch(cfg: Any, world_size: int = 1) -> int:
    """Images per optimizer step: ``data.batch_size · world_size · train.accumulate``."""
    return cfg.data.batch_size * world_size * cfg.train.accumulate


def base_lr(cfg: Any, world_size: int = 1) -> float:
    """``optim.lr``, times ``effective_batch / optim.base_batch`` with ``optim.auto_scale_lr``
    (the optimizer's ``defaults["lr"]`` equals it: both apply ``linear_scaled_lr``)."""
    optim = cfg.optim
    if not getattr(optim, "auto_scale_lr", False):
        return float(optim.lr)
    return linear_scaled_lr(float(optim.lr), effective_batch(cfg, world_size), optim.base_batch)


class RunLength(NamedTuple):
    """``batches_per_epoch`` global batches (``batch_size · world_size``), ``iters_per_epoch``
    optimizer steps per epoch, and the run's ``max_iters`` (``UNBOUNDED_ITERS`` for a
    wall-time budget alone)."""

    batches_per_epoch: int
    iters_per_epoch: int
    max_iters: int


def run_length(cfg: Any, dataset_size: int, world_size: int = 1) -> RunLength:
    """``train.max_iters``, or ``train.epochs`` over ``dataset_size`` images."""
    train = cfg.train
    batches = max(1, dataset_size // (cfg.data.batch_size * world_size))
    if train.max_iters is not None:
        max_iters = train.max_iters
    elif train.epochs is not None:
        max_iters = max(1, train.epochs * batches // train.accumulate)
    else:
        max_iters = UNBOUNDED_ITERS
    return RunLength(batches, max(1, batches // train.accumulate), max_iters)


# --- optimizer and schedule --------------------------------------------------------------


def build_optimizer_for(cfg: Any, model: nn.Module, world_size: int = 1) -> torch.optim.Optimizer:
    """The ``optim`` optimizer over ``model``'s trainable parameters; its ``defaults["lr"]``
    is ``base_lr(cfg, world_size)``."""
    return build_optimizer(
        model, cfg.optim.model_dump(), batch_size=effective_batch(cfg, world_size)
    )


def build_schedule(cfg: Any, lr: float, max_iters: int) -> LRSchedule:
    """The run's ``LRSchedule`` (``schedule.warmup`` × ``schedule.policy``) over ``max_iters``
    from base LR ``lr``."""
    policy, warmup = cfg.schedule.policy.model_dump(), cfg.schedule.warmup.model_dump()
    return build_lr_schedule(lr, policy, warmup, max_iters)


def default_hooks(cfg: Any) -> list[Hook]:
    """The trainer's hooks, in the loop's order: LR (with ``schedule.scale_momentum`` and
    ``train.log_lr_change``), EMA, metrics log, evaluation, checkpoints."""
    train = cfg.train
    momentum_correction = (
        MomentumCorrection(cfg.schedule.scale_momentum_threshold)
        if cfg.schedule.scale_momentum
        else None
    )
    lr_log = LRChangeLog(train.log_lr_change) if train.log_lr_change is not None else None
    return [
        LRScheduleHook(momentum_correction, lr_log),
        EMAHook(),
        MetricsLogHook(train.log_every),
        EvalHook(train.eval_every, best_metric(cfg.eval)),
        CheckpointHook(train.ckpt_every),
    ]


# --- loaders -----------------------------------------------------------------------------


def train_loader(
    cfg: Any,
    dataset: Dataset,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
) -> DataLoader:
    """Batches of ``data.train_transforms`` in the ``data.sampler`` order of a 1-process run
    with batch ``batch_size · world_size``; each rank reads its slice of every global batch.
    ``start_batch``: global batches already consumed (``iteration · accumulate``);
    ``num_workers``: default ``data.num_workers``."""
    sampler = build_train_sampler(
        cfg.data, dataset, seed=cfg.seed, start_batch=start_batch, rank=rank, world_size=world_size
    )
    return build_loader(
        dataset,
        cfg.data.train_transforms,
        batch_sampler=sampler,
        seed=cfg.seed,
        num_workers=cfg.data.num_workers if num_workers is None else num_workers,
        size_divisor=cfg.data.size_divisor,
    )


def eval_loader(
    cfg: Any,
    dataset: Dataset,
    batch_size: int | None = None,
    batch_sampler: Any = None,
    num_workers: int | None = None,
) -> DataLoader:
    """Sequential batches of ``data.val_transforms`` (``batch_size``, default
    ``data.val_batch_size or data.batch_size``), or the given ``batch_sampler``'s."""
    if batch_sampler is None and batch_size is None:
        batch_size = cfg.data.val_batch_size or cfg.data.batch_size
    return build_loader(
        dataset,
        cfg.data.val_transforms,
        seed=cfg.seed,
        batch_sampler=batch_sampler,
        batch_size=batch_size,
        num_workers=cfg.data.num_workers if num_workers is None else num_workers,
        size_divisor=cfg.data.size_divisor,
    )


def eval_settings(cfg: Any) -> EvalSettings:
    """What ``evaluator.predict_dataset`` / ``evaluate_model`` need of the config: the
    validation loader's settings (as ``eval_loader``), ``eval.*`` and ``train.progress``."""
    return EvalSettings(
        transforms=list(cfg.data.val_transforms),
        batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
        size_divisor=cfg.data.size_divisor,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        metric=cfg.eval.metric,
        score_thr=cfg.eval.score_thr,
        tta=cfg.eval.tta,
        sliced=cfg.eval.sliced,
        progress=cfg.train.progress,
    )
