"""Metric sinks: a JSONL file (one object per line), TensorBoard event files, and a fan-out.

Every logger has ``log(step, metrics)`` and ``close()``. Values may be Python
numbers, numpy scalars or one-element tensors; other values (strings, lists) are
written to JSONL as they are and skipped by TensorBoard.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _plain(value: Any) -> Any:
    """A JSON-ready value: tensors/numpy scalars → Python numbers, nan/inf → "nan"/"inf"/"-inf"."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JSONLLogger:
    """Append one JSON object per ``log`` call, ``{"step": step, **metrics}``, flushed at once."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record, allow_nan=False, default=str) + "\n")
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class TensorBoardLogger:
    """Scalars to TensorBoard event files in ``log_dir`` (one tag per metric key)."""

    def __init__(self, log_dir: str | os.PathLike, flush_secs: int = 30):
        from torch.utils.tensorboard import SummaryWriter  # heavy import, only when used

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                self._writer.add_scalar(key, float(value), int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MetricsLoggers:
    """Fan-out: ``log`` and ``close`` forwarded to every logger in order."""

    def __init__(self, loggers: list[Any] | None = None):
        self.loggers = list(loggers or [])

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(step, metrics)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

    def __enter__(self) -> MetricsLoggers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
