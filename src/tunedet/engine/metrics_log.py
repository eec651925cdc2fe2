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


def repair_jsonl(path: str | os.PathLike, keep_rows: int | None = None, note: Any = print) -> int:
    """Make ``path`` whole lines only before appending to it; returns its row count.

    A last line without its newline (a process killed mid-write) is dropped, and with
    ``keep_rows`` the rows after the first ``keep_rows`` (written after the checkpoint a
    run resumes from) too; ``note`` gets one line for each. The file is rewritten by
    renaming a temporary copy over it.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    notes = []
    if lines and not lines[-1].endswith(b"\n"):
        notes.append(f"{path}: dropped a torn last line ({len(lines[-1])} bytes)")
        lines = lines[:-1]
    if keep_rows is not None and len(lines) > keep_rows:
        dropped = len(lines) - keep_rows
        notes.append(f"{path}: dropped {dropped} row(s) written after the checkpoint resumed from")
        lines = lines[:keep_rows]
    if notes:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(b"".join(lines))
        os.replace(tmp, path)
        for line in notes:
            note(line)
    return len(lines)


class JSONLLogger:
    """Append one JSON object per ``log`` call, ``{"step": step, **metrics}``, as one whole
    line written and flushed at once; ``rows`` counts the file's lines.

    An existing file is first made whole (``repair_jsonl``: a torn last line dropped, and
    with ``keep_rows`` the rows after the first ``keep_rows``), so a resumed run continues
    the log of its checkpoint without duplicate rows.
    """

    def __init__(self, path: str | os.PathLike, keep_rows: int | None = None, note: Any = print):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = repair_jsonl(self.path, keep_rows, note)
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record, allow_nan=False, default=str) + "\n")
        self._file.flush()
        self.rows += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class TensorBoardLogger:
    """Scalars to TensorBoard event files in ``log_dir`` (one tag per metric key)."""

    def __init__(
        self, log_dir: str | os.PathLike, flush_secs: int = 30, purge_step: int | None = None
    ):
        """``purge_step``: a resumed run's first step; TensorBoard hides the events an
        earlier process wrote at that step and after (written after its checkpoint)."""
        from torch.utils.tensorboard import SummaryWriter  # heavy import, only when used

        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(
            log_dir=str(self.log_dir), flush_secs=flush_secs, purge_step=purge_step
        )

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
