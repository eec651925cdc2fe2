"""Trials side by side on one machine: P worker processes with T torch threads each.

``tunedet tune`` and ``tunedet fit``'s search start P processes (spawned, so no forked
torch thread pools) that take trials from one study in a shared storage (the SQLite
file next to the study, or ``--storage``); each calls ``torch.set_num_threads(T)``.
On a CPU, small detector steps do not scale linearly with threads (small convolutions,
Python overhead, the evaluation between steps), so several narrow trials at once can
finish more trials per hour than one wide trial. ``benchmarks/trial_layout.py``
measures trials/hour for each layout; its verdict sets ``TRIAL_THREADS``.

The default layout on a CPU (``choose_layout``): threads per trial from ``--threads``,
else the config's ``threads``, else ``TRIAL_THREADS``; as many workers as the cores
hold at that width, never more than the trials left (the threads then widen to the
cores again). On CUDA or MPS one worker, unless ``--workers`` asks for more.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Torch threads per trial by default on a CPU, from benchmarks/trial_layout.py on the
# retinanet/demo recipe (docs/TUNING.md, "Trials side by side").
TRIAL_THREADS = 1

# After Ctrl-C the workers (which get the terminal's SIGINT too) finish their iteration
# and fail their trial; those still running after this long are sent SIGTERM.
STOP_GRACE_S = 5.0


class WorkersInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while trial workers ran; their running trials are failed. A
    ``KeyboardInterrupt``, so a command that does not catch it ends as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass(frozen=True)
class TrialLayout:
    """``workers`` processes × ``threads`` torch threads (None: the config's or torch's
    default) and why."""

    workers: int
    threads: int | None
    reason: str

    def __str__(self) -> str:
        width = "default threads" if self.threads is None else f"{self.threads} thread(s)"
        return f"{self.workers} trial process(es) × {width} ({self.reason})"


def available_cores() -> int:
    """The cores this process may run on (the affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_layout(
    workers: int | None,
    threads: int | None,
    config_threads: int | None,
    device_type: str,
    trials_left: int | None,
    cores: int | None = None,
) -> TrialLayout:
    """The layout for ``trials_left`` trials (None: a time budget only); the rules are
    in the module docstring. ``workers`` and ``threads`` are the user's flags."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    cap = trials_left
    if device_type != "cpu":
        count = workers or 1
        count = min(count, cap) if cap else count
        why = "--workers" if workers else f"one trial at a time on {device_type}"
        return TrialLayout(max(count, 1), threads or config_threads, why)
    cores = cores or available_cores()
    width = threads or config_threads
    if width is not None:
        count = workers or max(1, cores // width)
        why = "--threads" if threads else "the config's threads"
    else:
        count = workers or max(1, cores // TRIAL_THREADS)
        why = f"TRIAL_THREADS={TRIAL_THREADS}" if workers is None else "--workers"
    why += f", {cores} core(s)"
    if cap and count > cap:
        count = cap
        why += f", {cap} trial(s) left"
    if width is None:
        width = max(1, cores // count)  # fewer trials than workers: widen them
    return TrialLayout(count, width, why)


def run_workers(target: Callable[[Any], None], jobs: list[Any], threads: int | None) -> None:
    """``target(job)`` for every job, each in its own spawned process with ``threads``
    torch threads; returns when all have finished.

    A worker that fails stops the others (SIGTERM: their trainers finish the iteration
    and their trials are recorded as failed), then its error is raised as one
    ``ValueError`` line. Ctrl-C or SIGTERM raises ``WorkersInterrupted`` once every
    worker has stopped. ``target`` must be a module-level function and ``jobs`` picklable.
    """
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    reports = context.SimpleQueue()
    processes = [
        context.Process(
            target=_worker_main,
            args=(target, job, index, threads, reports),
            name=f"trial-worker-{index}",
        )
        for index, job in enumerate(jobs)
    ]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    received: int | None = None
    try:
        for process in processes:
            process.start()
        running = {p.sentinel: p for p in processes}
        while running:
            try:
                for sentinel in wait(list(running)):
                    process = running.pop(sentinel)
                    process.join()
                    if process.exitcode != 0 and received is None:
                        _stop(running.values(), grace=0.0)
            except (KeyboardInterrupt, _Interrupt) as interrupt:
                received = getattr(interrupt, "signum", signal.SIGINT)
                _stop(running.values(), grace=STOP_GRACE_S)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process in processes:  # never leave a worker behind
            if process.is_alive():
                process.kill()
                process.join()
    failures = []
    while not reports.empty():
        failures.append(reports.get())
    if received is not None:
        raise WorkersInterrupted(received)
    errors = sorted((i, text) for i, kind, text in failures if kind == "error")
    if errors:
        index, text = errors[0]
        raise ValueError(f"trial worker {index + 1} of {len(jobs)}: {text}")
    interrupted = [i for i, kind, _ in failures if kind == "interrupted"]
    if interrupted:  # a worker signalled alone (kill PID): the study stops as a whole
        raise WorkersInterrupted(signal.SIGTERM)
    crashed = [p for p in processes if p.exitcode != 0]
    if crashed:  # killed hard (out of memory): no report
        raise ValueError(
            f"trial worker {processes.index(crashed[0]) + 1} of {len(jobs)} died "
            f"(exit code {crashed[0].exitcode}); its trial stays running until the "
            "storage's heartbeat marks it failed"
        )


class _Interrupt(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise _Interrupt(signum)


def _stop(processes: Any, grace: float) -> None:
    """SIGTERM to the workers still running after ``grace`` seconds, then wait for them."""
    from multiprocessing.connection import wait

    alive = [p for p in processes if p.is_alive()]
    if grace > 0 and alive:
        wait([p.sentinel for p in alive], timeout=grace)
    for process in alive:
        if process.is_alive():
            process.terminate()
    for process in alive:
        process.join()


def _worker_main(
    target: Callable[[Any], None], job: Any, index: int, threads: int | None, reports: Any
) -> None:
    """A worker process: ``threads`` torch threads, then ``target(job)``; an error or an
    interrupt is reported to the parent as one line and the exit code is 1."""
    import torch

    from tunedet.engine.interrupt import TrainingInterrupted

    # Outside a trainer (which handles both itself) SIGTERM stops like Ctrl-C, so Optuna
    # records the running trial as failed instead of leaving it running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if threads:
        torch.set_num_threads(threads)
    try:
        target(job)
    except (KeyboardInterrupt, TrainingInterrupted) as stop:
        reports.put((index, "interrupted", str(stop)))
        sys.exit(1)
    except (ValueError, OSError, MemoryError) as error:  # expected: bad config, disk, memory
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        reports.put((index, "error", first))
        sys.exit(1)
    except Exception as error:  # a bug: the traceback here, one line in the parent
        traceback.print_exc()
        first = (str(error).strip().splitlines() or [""])[0]
        reports.put((index, "error", f"{type(error).__name__}: {first}"))
        sys.exit(1)
