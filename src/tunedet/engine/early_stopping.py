"""Early stopping on a validation metric, counted in evaluations (``train.early_stop``)."""

from __future__ import annotations

import math
from typing import Any


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
