"""``tunedet fit``'s search: a small multi-fidelity Optuna study over the knobs that the
rules leave open.

Knobs: ``scale_mult`` (the scale rule's factor times 0.5, 0.71, 1 or 1.41: a smaller
input trains more images in the same time; searched only when whole images are trained:
with crops a step costs the same at any scale, and short trials then only measure which
scale learns fastest, which favours small inputs that a full-length run outgrows) and,
for imagery that is not overhead, ``hflip`` (a mirror image may not be a valid sample:
text, digits); with neither open, the study is one trial of the rules' recipe. The LR
is the LR finder's and is not searched: short trials favour a low LR that full-length
runs outgrow (the same short-horizon bias; Wu et al. 2018, "Understanding Short-Horizon
Bias in Stochastic Meta-Optimization").

The knobs are discrete, so the study is a grid: each combination is one trial, the
rules' recipe (every multiplier 1, flips on) first, the others in a seeded order, all
enqueued when the study is made. Each trial trains ``trial_iters`` iterations and is
evaluated at a third, two thirds and the end; Optuna's successive-halving pruner
(reduction factor 3, first rung at a third) stops the trials that are not in the top
third of their rung. The final training takes the best complete trial, or the rules'
recipe while no other trial beats it by more than 0.01 AP50 (``KEEP_RULES_MARGIN``). The
study lives in ``OUT/study.db`` or any SQLAlchemy URL (``tuning/study.py``'s storage:
heartbeat, PostgreSQL): a re-run of fit continues it. On a CPU the trials run side by
side, P worker processes of T torch threads each (``tuning/trial_workers.py``), all
stopping at one deadline.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunedet.tuning.study import open_storage

STUDY_NAME = "fit"
SCALE_MULT = [0.5, 0.71, 1.0, 1.41]  # the scale rule's factor times these
# Another combination replaces the rules' recipe only when its trial scores more than this
# (AP50) above the rules' trial. In a suite run (shapes, seed 1) a trial that won by 0.0005
# AP50 (a 0.71× input without flips) scored 0.580 test AP; the rules' recipe, at the same
# LR in the run before, 0.665 (docs/PERFORMANCE.md).
KEEP_RULES_MARGIN = 0.01


def search_grid(overhead: bool, search_scale: bool, seed: int = 0) -> list[dict[str, Any]]:
    """The combinations of the open knobs, the rules' recipe first and the others in a
    seeded order. With no knob open (overhead imagery trained as crops) one trial of the
    rules' recipe, ``{}``: its weights, trained without the held-out images, give the
    validation figures when the final model trains on every image."""
    space: dict[str, list[Any]] = {}
    if search_scale:
        space["scale_mult"] = SCALE_MULT
    if not overhead:
        space["hflip"] = [True, False]
    first = {k: v for k, v in {"scale_mult": 1.0, "hflip": True}.items() if k in space}
    combinations = [
        dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())
    ]
    rest = [c for c in combinations if c != first]
    random.Random(seed).shuffle(rest)
    return [first, *rest]


class FitSearch:
    """The study of one fit run; ``make_raw(chosen)`` gives a trial's raw config."""

    def __init__(
        self,
        make_raw: Any,
        out: Path,
        storage: str | None,
        seed: int,
        trial_iters: int,
        overhead: bool,
        metric: str = "AP50",
        log: Any = print,
        worker: int = 0,
        workers: int = 1,
        search_scale: bool = True,
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.make_raw = make_raw
        self.out = out
        self.storage = storage
        self.seed = seed
        self.trial_iters = trial_iters
        self.overhead = overhead
        self.metric = metric
        self.log = log
        self.search_scale = search_scale
        url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
        rung = max(1, trial_iters // 3)
        self.study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=open_storage(url),
            direction="maximize",
            pruner=optuna.pruners.SuccessiveHalvingPruner(
                min_resource=rung, reduction_factor=3, min_early_stopping_rate=0
            ),
            load_if_exists=True,
        )
        done = len(self.study.get_trials(deepcopy=False))
        # workers started together differ by their index; with several, TPE's constant
        # liar keeps them from sampling the same region
        self.study.sampler = optuna.samplers.TPESampler(
            seed=seed + done * workers + worker, multivariate=True, constant_liar=workers > 1
        )
        self.grid = search_grid(overhead, search_scale, seed)
        if done == 0:
            for combination in self.grid:
                self.study.enqueue_trial(combination)

    def sample(self, trial: Any) -> dict[str, Any]:
        """The trial's knobs: its enqueued grid combination (a trial beyond the grid, as
        ``optimize`` with a larger ``max_trials`` asks, is sampled by TPE)."""
        chosen: dict[str, Any] = {}
        if self.search_scale:
            chosen["scale_mult"] = trial.suggest_categorical("scale_mult", SCALE_MULT)
        if not self.overhead:
            chosen["hflip"] = trial.suggest_categorical("hflip", [True, False])
        return chosen

    def objective(self, trial: Any, seconds_left: float) -> float:
        import optuna

        from tunedet.config.loader import validate
        from tunedet.engine.trainer import Trainer

        chosen = self.sample(trial)
        raw = self.make_raw(
            {
                **chosen,
                "max_iters": self.trial_iters,
                # a cap, so the last trial cannot eat the final training's time
                "max_minutes": max(seconds_left, 1.0) / 60,
                "eval_every": max(1, self.trial_iters // 3),
                "warmup_iters": max(1, self.trial_iters // 10),
            }
        )
        run_dir = self.out / "trials" / f"{trial.number:04d}"
        pruned_at: list[int] = []

        def on_evaluate(iteration: int, metrics: dict[str, float]) -> bool:
            trial.report(float(metrics.get(self.metric, 0.0)), iteration)
            # a trial that has trained to its end is complete: nothing left to save
            if iteration < self.trial_iters and trial.should_prune():
                pruned_at.append(iteration)
                return True
            return False

        trainer = Trainer(
            validate(raw, f"fit trial {trial.number}"), run_dir, lambda *_: None, on_evaluate
        )
        metrics = trainer.train()
        value = float(metrics.get(self.metric, 0.0))
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in chosen.items())
        if pruned_at:
            self.log(f"trial {trial.number}: pruned at iteration {pruned_at[0]} ({shown})")
            raise optuna.TrialPruned()
        self.log(f"trial {trial.number}: {self.metric}={value:.4f} ({shown})")
        return value

    def optimize(self, seconds_left: Any, max_trials: int | None = None) -> None:
        """Run trials while ``seconds_left()`` is positive (a trial is started only when
        at least a third of one fits) and the study holds fewer than ``max_trials`` (by
        default the grid's size). An interrupt or an error fails the running trial, then
        propagates."""
        import warnings

        from tunedet.engine.finite_guard import NonFiniteLossError

        # ask/tell runs trials as Study.optimize does; the storage's heartbeat still works
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        if max_trials is None:
            max_trials = len(self.grid)
        while True:
            left = seconds_left()
            if left <= 0 or not self._fits(left):
                return
            if self._started() >= max_trials:
                return
            with _study_lock(self.out):
                trial = self.study.ask()
            try:
                value = self.objective(trial, left)
            except NonFiniteLossError:
                from optuna.trial import TrialState

                self.study.tell(trial, state=TrialState.FAIL)
                self.log(f"trial {trial.number}: failed (non-finite loss)")
                continue
            except Exception as error:
                import optuna

                if isinstance(error, optuna.TrialPruned):
                    from optuna.trial import TrialState

                    self.study.tell(trial, state=TrialState.PRUNED)
                    continue
                self._fail(trial)
                raise
            except BaseException:  # Ctrl-C, SIGTERM in a worker
                self._fail(trial)
                raise
            self.study.tell(trial, value)

    def _started(self) -> int:
        """Trials taken so far (the enqueued grid's waiting ones are not)."""
        from optuna.trial import TrialState

        return sum(t.state != TrialState.WAITING for t in self.study.get_trials(deepcopy=False))

    def _fail(self, trial: Any) -> None:
        from optuna.trial import TrialState

        self.study.tell(trial, state=TrialState.FAIL)

    def optimize_side_by_side(
        self, deadline: float, workers: int, threads: int | None, max_trials: int | None = None
    ) -> None:
        """``optimize`` in ``workers`` processes with ``threads`` torch threads each, until
        ``deadline`` (a ``time.monotonic()`` value: one clock for every process here).
        ``make_raw`` must be picklable (a module-level function or a partial of one)."""
        from tunedet.tuning.trial_workers import run_workers

        jobs = [
            SearchWorkerJob(
                self.make_raw,
                self.out,
                self.storage,
                self.seed,
                self.trial_iters,
                self.overhead,
                self.metric,
                deadline,
                worker,
                workers,
                max_trials,
                self.search_scale,
            )
            for worker in range(workers)
        ]
        run_workers(search_worker, jobs, threads)

    def _fits(self, left: float) -> bool:
        """A new trial only when its first rung (a third of a complete trial) fits."""
        from optuna.trial import TrialState

        durations = [
            t.duration.total_seconds()
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.duration is not None
        ]
        return not durations or left >= sum(durations) / len(durations) / 3

    def rows(self) -> list[dict[str, Any]]:
        """One row per trial taken: number, state, value (last reported for pruned ones),
        params (grid combinations still waiting when the time ran out are left out)."""
        from optuna.trial import TrialState

        rows = []
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.WAITING:
                continue
            if t.state == TrialState.COMPLETE:
                value, state = t.value, "complete"
            elif t.state == TrialState.PRUNED and t.intermediate_values:
                step = max(t.intermediate_values)
                value, state = t.intermediate_values[step], f"pruned at {step}"
            else:
                value, state = None, t.state.name.lower()
            rows.append({"trial": t.number, "state": state, "value": value, "params": t.params})
        rows.sort(key=lambda r: (r["state"] != "complete", -(r["value"] or -math.inf)))
        return rows

    def best(self) -> tuple[dict[str, Any], float, int] | None:
        """(knobs, value, number) of the trial the final training takes: the best complete
        one, except that the rules' recipe (the grid's first combination) is kept unless
        another beats it by more than ``KEEP_RULES_MARGIN``; None without a complete trial."""
        from optuna.trial import TrialState

        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            return None
        trial = max(complete, key=lambda t: (t.value, -t.number))
        rules = [t for t in complete if t.params == self.grid[0]]
        if rules and trial.value <= rules[0].value + KEEP_RULES_MARGIN:
            trial = rules[0]
        return dict(trial.params), float(trial.value), trial.number

    def importances(self) -> tuple[dict[str, float], str]:
        """fANOVA / PED-ANOVA importances (tuning/importance.py) and what they rest on:
        the complete trials when there are 3 of them, else every trial at the first rung
        (the evaluation all of them reached, pruned ones included). Empty, with the
        reason, under 3 trials or a single value."""
        import optuna
        from optuna.trial import TrialState, create_trial

        from tunedet.tuning.importance import param_importances

        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        study = self.study
        basis = f"{len(complete)} complete trials of {self.trial_iters} iterations"
        if len(complete) < 3 or len({t.value for t in complete}) < 2:
            scored = [
                t
                for t in self.study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.intermediate_values
            ]
            need = "importances need 3 trials scored at a common iteration"
            if len(scored) < 3:
                return {}, need
            steps = set.intersection(*(set(t.intermediate_values) for t in scored))
            if not steps:
                return {}, need
            step = min(steps)
            study = optuna.create_study(direction="maximize")
            for t in scored:
                study.add_trial(
                    create_trial(
                        params=t.params,
                        distributions=t.distributions,
                        value=t.intermediate_values[step],
                    )
                )
            basis = f"{len(scored)} trials at their first evaluation ({step} iterations)"
            if len({t.intermediate_values[step] for t in scored}) < 2:
                return {}, f"{basis}: one value, no importances"
        try:
            found, method = param_importances(study)
        except (RuntimeError, ValueError) as error:
            return {}, f"{basis}: {error}"
        return {k: float(v) for k, v in found.items()}, f"{method} over {basis}"


@dataclass
class SearchWorkerJob:
    """What one search worker process needs to open the study and run trials."""

    make_raw: Any
    out: Path
    storage: str | None
    seed: int
    trial_iters: int
    overhead: bool
    metric: str
    deadline: float  # time.monotonic()
    worker: int
    workers: int
    max_trials: int | None = None
    search_scale: bool = True


def search_worker(job: SearchWorkerJob) -> None:
    """One worker's trials of the study (``trial_workers.run_workers``' target); the
    study exists already (its first trial enqueued by the parent)."""
    search = FitSearch(
        job.make_raw, job.out, job.storage, job.seed, job.trial_iters, job.overhead,
        job.metric, functools.partial(print, flush=True), job.worker, job.workers,
        job.search_scale,
    )  # fmt: skip
    search.optimize(lambda: job.deadline - time.monotonic(), job.max_trials)


@contextlib.contextmanager
def _study_lock(out: Path) -> Iterator[None]:
    """Serialise ``study.ask()`` over the worker processes of one machine: on SQLite,
    Optuna reads a waiting (enqueued) trial and marks it running in two statements, so two
    workers asking at once can both take the first trial (optuna/optuna#4621)."""
    try:
        import fcntl
    except ImportError:  # Windows has no flock: the race stays possible there
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".study.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
