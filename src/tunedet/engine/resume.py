"""Resuming a run: the newest usable checkpoint of its folder, restored into the trainer.

A checkpoint that is truncated, corrupt (CRC-32), not a checkpoint of this run's model,
or holds pickled objects is skipped with one line naming it, and the previous one is
tried; ``CheckpointError`` when checkpoints exist but none is usable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunedet.engine.checkpoint import (
    CheckpointError,
    checkpoints_newest_first,
    load_checkpoint,
    load_model_state,
    remove_stale_temp_files,
    set_rng_state,
)
from tunedet.engine.ema import ModelEMA


def resume_run(trainer: Any, time_budget: bool = False) -> bool:
    """Load the newest usable checkpoint of ``trainer.run_dir``; False when there is none.
    ``time_budget``: the run's length is a wall-time budget alone (neither
    ``train.max_iters`` nor ``train.epochs``), so its planned length comes from the
    checkpoint."""
    if trainer.is_main:
        remove_stale_temp_files(trainer.ckpt_dir)
        remove_stale_temp_files(trainer.run_dir)  # of last.pt, best.pt
    candidates = checkpoints_newest_first(trainer.ckpt_dir)
    for path in candidates:
        try:
            load_training_checkpoint(trainer, path, time_budget)
        except CheckpointError as err:
            trainer.log(f"skipping bad checkpoint: {err}")
            continue
        trainer.log(f"resumed from {path} at iteration {trainer.iteration}")
        return True
    if candidates:
        raise CheckpointError(
            f"no usable checkpoint in {trainer.ckpt_dir} ({len(candidates)} found, all bad): "
            "move them away or set train.resume=false"
        )
    return False


def load_training_checkpoint(trainer: Any, path: Path, time_budget: bool = False) -> None:
    """Restore model, optimizer, EMA, loss scaler, early stopping, RNG, iteration, run id,
    best and metrics rows from ``path``; ``CheckpointError`` when it does not fit."""
    state = load_checkpoint(path, map_location=trainer.device)
    required = {"iteration": int, "model": dict, "optimizer": dict, "rng": dict}
    for key, kind in required.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(
                f"checkpoint {path} is not a training checkpoint (no '{key}' entry)"
            )
    load_model_state(trainer.model, state["model"], source=path)
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.ema is not None:
            if "ema" in state:
                trainer.ema.load_state_dict(state["ema"])
            else:  # EMA switched on for a run that had none: start it from the weights
                trainer.ema = ModelEMA(trainer.model, trainer.ema.decay, trainer.ema.tau)
        if trainer.scaler is not None and "scaler" in state:
            trainer.scaler.load_state_dict(state["scaler"])
        if trainer.early_stop is not None and "early_stop" in state:
            trainer.early_stop.load_state_dict(state["early_stop"])
        rng = state["rng"]
        ranks = state.get("rng_ranks")
        if isinstance(ranks, list) and len(ranks) == trainer.world_size:
            rng = ranks[trainer.rank]
        set_rng_state(rng)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise CheckpointError(f"checkpoint {path} does not fit this run ({reason})") from None
    trainer.iteration = state["iteration"]
    trainer.run_id = str(state.get("run_id") or trainer.run_id)
    trainer.best = state.get("best") if isinstance(state.get("best"), dict) else None
    rows = state.get("metrics_rows")
    trainer.metrics_rows = int(rows) if isinstance(rows, int) else None
    if time_budget and int(state.get("max_iters", trainer.max_iters)) != trainer.max_iters:
        trainer.max_iters = int(state["max_iters"])
        trainer.schedule = trainer.build_schedule()
    trainer.last_checkpoint = str(path)
