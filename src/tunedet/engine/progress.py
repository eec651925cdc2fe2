"""Progress on the console: a tqdm bar on a terminal, else one plain line per log interval.

A bar redraws itself with carriage returns and cursor moves; written to a file (a SLURM
log, ``tunedet train > log.txt``) those become escape codes. So bars are shown only
when ``train.progress`` is on and stderr (where tqdm writes) is a terminal; otherwise
the trainer logs ``progress_line`` every ``train.log_every`` iterations.
"""

from __future__ import annotations

import sys
from typing import Any


def bars_enabled(progress: bool, stream: Any = None) -> bool:
    """True when a progress bar should be drawn: ``progress`` on and ``stream`` (default
    stderr) a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(progress and isatty is not None and isatty())


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_line(
    iteration: int,
    max_iters: int | None,
    row: dict[str, float],
    elapsed: float,
    done_since_start: int,
) -> str:
    """``iter 40/1200 (3%) loss 1.234 cls 0.61 box 0.62 lr 0.002 | 0m12s, eta 5m48s``:
    the losses and lr of ``row``; the ETA from the speed since the run (or resume) began
    (``max_iters`` None: a time budget, no ETA)."""
    terms = " ".join(
        f"{k} {v:.4g}" for k, v in row.items() if k not in ("time", "skipped", "loss", "lr")
    )
    head = f"iter {iteration}"
    if max_iters is not None:
        head += f"/{max_iters} ({100 * iteration // max_iters}%)"
    parts = [head, f"loss {row['loss']:.4g}", terms, f"lr {row['lr']:.4g}"]
    line = " ".join(p for p in parts if p) + f" | {format_duration(elapsed)}"
    if max_iters is not None and done_since_start > 0:
        line += f", eta {format_duration(elapsed / done_since_start * (max_iters - iteration))}"
    if row.get("skipped"):
        line += f", {int(row['skipped'])} skipped"
    return line
