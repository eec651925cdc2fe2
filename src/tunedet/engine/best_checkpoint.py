"""``best.pt``: the weights of the evaluation with the best validation metric.

The metric is ``eval.best_metric``, else AP (``eval.metric: coco``) or mAP (``voc07``,
``voc12``); higher is better. ``best.pt`` holds the weights, config and class names
(no optimizer state); a run without validation links it to the final checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

from tunedet.engine.checkpoint import save_checkpoint
from tunedet.evaluation import COCO_STAT_NAMES


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


def update_best(trainer: Any, metrics: dict[str, float], name: str) -> None:
    """Write ``best.pt`` when metric ``name`` (``best_metric``) of ``metrics`` beats every
    earlier evaluation of the run (``trainer.best``: ``{"metric", "value", "iteration"}``,
    kept in checkpoints)."""
    if name not in metrics:  # checked at the start (check_best_metric); a custom evaluate
        return
    value = float(metrics[name])
    if not math.isfinite(value) or (trainer.best is not None and value <= trainer.best["value"]):
        return
    trainer.best = {"metric": name, "value": value, "iteration": trainer.iteration}
    if trainer.is_main:
        state = trainer.state_dict()
        for key in ("optimizer", "rng", "scaler", "early_stop", "metrics_rows"):
            state.pop(key, None)
        save_checkpoint(trainer.run_dir / "best.pt", state)
