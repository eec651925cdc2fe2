"""Stop a run cleanly on SIGTERM or Ctrl-C (SIGINT): finish the iteration, save, exit.

While ``StopRequest`` is active the first SIGTERM or SIGINT only records the signal;
the trainer checks ``requested`` after each iteration, writes a checkpoint and raises
``TrainingInterrupted`` (the CLI exits with ``128 + signal``: 143 for SIGTERM, 130 for
Ctrl-C). A second signal of the same kind stops at once, without saving. Under
``torchrun`` a Ctrl-C reaches each worker as SIGINT and then as SIGTERM from the
launcher: different kinds, so both count as one request.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped by a signal after saving a checkpoint; re-run to resume."""

    def __init__(self, signum: int, iteration: int, checkpoint: str | None):
        name = signal.Signals(signum).name
        where = f"saved {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(
            f"{name} at iteration {iteration}: {where}; run the same command again to resume"
        )
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """Context manager recording SIGINT/SIGTERM in ``signum`` instead of dying at once.

    Handlers are installed only in the main thread (Python allows no other) and the
    previous ones are restored on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum == signum:  # the same signal twice: stop now, without saving
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
