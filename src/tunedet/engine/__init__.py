"""Training engine: LR schedule, optimizers, checkpoints, metric logs, finite-loss guard.

Importing this package registers the ``optimizer``, ``lr_policy`` and ``warmup``
components.
"""

from tunedet.engine import adabound  # noqa: F401  (registers optimizer "adabound")
from tunedet.engine.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    load_model_state,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tunedet.engine.finite_guard import NonFiniteLossError, check_finite_loss, is_finite_loss
from tunedet.engine.lr_schedule import LRSchedule, build_lr_schedule
from tunedet.engine.metrics_log import JSONLLogger, MetricsLoggers, TensorBoardLogger
from tunedet.engine.optim import build_optimizer, clip_gradients, param_groups

__all__ = [
    "CheckpointError",
    "JSONLLogger",
    "LRSchedule",
    "MetricsLoggers",
    "NonFiniteLossError",
    "TensorBoardLogger",
    "build_lr_schedule",
    "build_optimizer",
    "check_finite_loss",
    "checkpoint_path",
    "clip_gradients",
    "is_finite_loss",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "param_groups",
    "prune_checkpoints",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]
