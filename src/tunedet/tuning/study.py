"""``tunedet tune``: an Optuna study whose trials train the config with sampled overrides.

One trial = one training run in ``OUT/trials/NNNN`` with the space's values applied as
dotted overrides; its value is the final validation metric (``space.metric``). With
``train.eval_every`` set, every periodic evaluation is reported to Optuna
(``trial.report(metric, iteration)``) and the pruner may stop the run there.

The study lives in a database: SQLite in ``OUT/study.db`` by default, or any
SQLAlchemy URL (``postgresql://user:pass@host/db``). Workers started with the same
storage and study name share it, so several processes or machines fill one study,
and re-running the command after an interruption continues it. ``--trials N`` is the
study's total (finished or pruned trials, over every worker and every run); a run
killed hard leaves its trial RUNNING until the heartbeat's grace period marks it failed.

On one machine the command itself runs P trials side by side, each in its own process
with T torch threads (``--workers P --threads T``; by default the layout that
``benchmarks/trial_layout.py`` measured fastest: ``tuning/trial_workers.py``).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunedet.config.loader import ConfigError, config_to_yaml, load_config
from tunedet.tuning.space import SearchSpace, overrides_for, params_from_optuna

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")
HEARTBEAT_S = 60
GRACE_S = 180


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def open_storage(url: str) -> Any:
    """An ``optuna.storages.RDBStorage`` for ``url``; SQLite waits for the file lock (several
    local workers), every backend gets a heartbeat so a killed worker's trial is failed."""
    import warnings

    import optuna
    import sqlalchemy.exc

    # The heartbeat and TPE's ``group`` are marked experimental; the warning is noise here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
            )
        except sqlalchemy.exc.DBAPIError as error:
            # Workers started together race to create the tables: the loser retries and
            # finds them. A server that is down fails the same way three times.
            if attempt == 2:
                raise _storage_error(url, error) from None
            time.sleep(1 + 2 * attempt)
        except Exception as error:  # sqlalchemy: bad URL, missing driver
            raise _storage_error(url, error) from None
    raise AssertionError("unreachable")


def _storage_error(url: str, error: Exception) -> ValueError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ValueError(f"cannot open study storage {redact(url)}: {first}")


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def make_sampler(name: str, space: SearchSpace, seed: int | None, parallel: bool = False) -> Any:
    """``parallel``: other trials run at the same time; TPE then treats their points as
    bad ones (the constant liar) so two workers do not sample the same region."""
    import optuna

    if name == "tpe":
        # multivariate + group: TPE models the joint density and handles conditional keys.
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=parallel
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise ValueError(f"unknown sampler '{name}' (choose from {', '.join(SAMPLERS)})")


def make_pruner(name: str) -> Any:
    """median: stop a trial whose metric is below the median of earlier trials at the same
    evaluation (after 3 finished trials); halving: asynchronous successive halving."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner '{name}' (choose from {', '.join(PRUNERS)})")


@dataclass
class TuneJob:
    """Everything a worker needs: the base config and overrides, the space, the budget."""

    config: str
    space: SearchSpace
    out: Path
    base_overrides: list[str]
    storage: str
    study_name: str
    sampler: str = "tpe"
    pruner: str = "median"
    trials: int | None = None
    timeout_min: float | None = None
    seed: int | None = None
    workers: int | None = None  # trial processes; None: chosen (trial_workers.choose_layout)
    threads: int | None = None  # torch threads per trial; None: chosen likewise
    worker: int = 0  # this process's index among the workers
    log: Any = print
    minutes: list[float] = field(default_factory=list)  # this process's trials, for the ETA


def trial_config(job: TuneJob, chosen: dict[str, Any]) -> Any:
    return load_config(job.config, [*job.base_overrides, *overrides_for(chosen)])


def run_trial(job: TuneJob, trial: Any) -> float:
    """The objective: train with the sampled overrides, report each evaluation, return the
    final metric. Raises ``optuna.TrialPruned`` when the pruner stops the run."""
    import optuna
    import torch

    from tunedet.engine.trainer import Trainer

    chosen = job.space.sample(trial)
    shown = ", ".join(f"{k}={v}" for k, v in _short(chosen).items())
    k = position(trial)
    of = f"{k}/{job.trials}" if job.trials else f"{k}"
    job.log(f"trial {of} (#{trial.number}) started: {shown}{_eta(job, k)}")
    # A trial never resumes: beside a folder left by an older study of the same name it
    # starts in a numbered one (engine/run_dir.py). The layout's threads, and no bar
    # when several workers share the terminal, are not part of the study's identity.
    runtime = ["train.resume=false", *([f"threads={job.threads}"] if job.threads else [])]
    if (job.workers or 1) > 1:
        runtime.append("train.progress=false")
    cfg = load_config(job.config, [*job.base_overrides, *overrides_for(chosen), *runtime])
    run_dir = job.out / "trials" / f"{trial.number:04d}"
    metric = job.space.metric
    pruned_at: list[int] = []

    def on_evaluate(iteration: int, metrics: dict[str, float]) -> bool:
        value = metrics[metric] if metric in metrics else _missing_metric(metric, metrics)
        trial.report(value, iteration)
        if trial.should_prune():
            pruned_at.append(iteration)
            return True
        return False

    start = time.monotonic()
    try:
        trainer = Trainer(cfg, run_dir, log=lambda *_: None, on_evaluate=on_evaluate)
        trial.set_user_attr("run_dir", str(trainer.run_dir))  # a numbered one beside a leftover
        trial.set_user_attr("threads", torch.get_num_threads())  # the trainer applied them
        trial.set_user_attr("worker", job.worker)
        metrics = trainer.train()
    finally:
        minutes = (time.monotonic() - start) / 60
        job.minutes.append(minutes)
    trial.set_user_attr("minutes", minutes)
    trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
    took = f"{minutes:.1f} min"
    if pruned_at:
        job.log(f"trial {of} (#{trial.number}): pruned at iteration {pruned_at[0]} ({took})")
        raise optuna.TrialPruned()
    value = metrics[metric] if metric in metrics else _missing_metric(metric, metrics)
    job.log(f"trial {of} (#{trial.number}): {metric}={value:.4f} ({took})")
    return float(value)


def position(trial: Any) -> int:
    """k of "trial k/N": 1 + the earlier-numbered trials that count or may still count
    (complete, pruned, running), so trials started together by several workers get
    different k."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    earlier = trial.study.get_trials(deepcopy=False, states=states)
    return 1 + sum(1 for t in earlier if t.number < trial.number)


def _eta(job: TuneJob, k: int) -> str:
    """``; ETA M min`` for the trials left (this one included) at the mean duration of this
    process's trials so far, ``workers`` at a time; with a time budget only, the budget
    left."""
    if job.trials is not None and job.minutes:
        left = job.trials - k + 1
        rounds = math.ceil(left / (job.workers or 1))
        minutes = rounds * sum(job.minutes) / len(job.minutes)
        return f"; ETA {minutes:.1f} min for {left} trial(s)"
    if job.timeout_min is not None:
        spent = sum(job.minutes)
        return f"; {max(job.timeout_min - spent, 0):.1f} min of --timeout-min left"
    return ""


def _missing_metric(metric: str, metrics: dict[str, float]) -> float:
    # A plain ValueError (not ConfigError, which fails one trial): every trial would fail.
    raise ValueError(
        f"the space's metric '{metric}' is not among the metrics ({', '.join(metrics)})"
    )


def _short(chosen: dict[str, Any]) -> dict[str, str]:
    return {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in chosen.items()}


def study_identity(job: TuneJob) -> dict[str, Any]:
    """What a study's trials share: the config, the fixed overrides and the search space
    (stored as the study's user attribute ``tunedet``, as JSON values)."""
    identity = {
        "config": str(job.config),
        "fixed_overrides": list(job.base_overrides),
        "space": job.space.describe(),
    }
    return json.loads(json.dumps(identity))


def check_identity(study: Any, job: TuneJob) -> None:
    """Record the identity in a new study; refuse to add trials of another config, fixed
    overrides or search space to an existing one (its trials would not be comparable, and
    best_config.yaml would not reproduce the best trial)."""
    wanted = study_identity(job)
    stored = study.user_attrs.get("tunedet")
    if stored is None:
        study.set_user_attr("tunedet", wanted)
        return
    if stored == wanted:
        return
    differences = []
    if stored.get("config") != wanted["config"]:
        differences.append(f"config {stored.get('config')} -> {wanted['config']}")
    if stored.get("fixed_overrides") != wanted["fixed_overrides"]:
        before, after = stored.get("fixed_overrides") or [], wanted["fixed_overrides"]
        dropped = [o for o in before if o not in after]
        added = [o for o in after if o not in before]
        change = " ".join([*(f"-{o}" for o in dropped), *(f"+{o}" for o in added)])
        differences.append(f"fixed overrides ({change or 'another order'})")
    if stored.get("space") != wanted["space"]:
        old_space, new_space = stored.get("space") or {}, wanted["space"]
        old_params = {p["key"]: p for p in old_space.get("params", [])}
        new_params = {p["key"]: p for p in new_space["params"]}
        changed = sorted(
            k
            for k in old_params.keys() | new_params.keys()
            if old_params.get(k) != new_params.get(k)
        )
        if old_space.get("metric") != new_space["metric"]:
            changed.insert(0, f"metric {old_space.get('metric')} -> {new_space['metric']}")
        differences.append(f"search space ({', '.join(changed)})")
    text = "; ".join(differences)
    if len(text) > 240:
        text = text[:237] + "..."
    raise ValueError(
        f"study '{job.study_name}' in {redact(job.storage)} was run with another {text}: "
        "add --new-study to start a new study beside it, or name one with --study"
    )


def next_free_study(name: str, out: Path, storage: str | None) -> tuple[str, Path]:
    """``(name, out)`` when neither the folder nor (in an explicit ``storage``) the study
    exists, else the first free ``(name-N, out-N)``, N = 2, 3, ..."""
    import optuna

    existing: set[str] = set()
    if storage is not None:
        existing = set(optuna.study.get_all_study_names(storage=open_storage(storage)))
    for n in itertools.count(1):
        suffix = "" if n == 1 else f"-{n}"
        folder, study = out.with_name(out.name + suffix), name + suffix
        if not folder.exists() and study not in existing:
            return study, folder
    raise AssertionError("unreachable")


def load_study(job: TuneJob) -> Any:
    """Create the study, or open it when it exists (a re-run or another worker) and was
    made with the same config, fixed overrides and space (``check_identity``)."""
    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(job.storage)
    try:
        study = optuna.create_study(
            study_name=job.study_name,
            storage=storage,
            pruner=make_pruner(job.pruner),
            direction="maximize",
            load_if_exists=True,
        )
        check_identity(study, job)
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as error:
        cause = error.__cause__ or error  # the database's own words
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ValueError(
            f"study storage {redact(job.storage)} is not an Optuna study database of this "
            f"version ({first}): give another --storage or --out"
        ) from None
    # A seeded sampler restarted on an existing study would replay its first picks:
    # offset the seed by the trials already there (re-runs and extra workers differ),
    # and the workers started together by their index.
    workers = job.workers or 1
    there = len(study.get_trials(deepcopy=False))
    seed = None if job.seed is None else job.seed + there * workers + job.worker
    study.sampler = make_sampler(job.sampler, job.space, seed, parallel=workers > 1)
    return study


def counted(study: Any) -> int:
    """Trials that count against ``--trials``: complete or pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def optimize(job: TuneJob) -> Any:
    """Run trials until the study holds ``job.trials`` counted trials or ``timeout_min``
    passes (whichever first), ``layout.workers`` at a time (``trial_layout``); returns
    the study. Several workers run in spawned processes (``trial_workers.run_workers``):
    an error in one is raised here as one line, Ctrl-C as ``WorkersInterrupted``."""
    from tunedet.tuning.trial_workers import run_workers

    study = load_study(job)
    done = counted(study)
    if job.trials is not None and done >= job.trials:
        job.log(f"study '{job.study_name}' already has {done} trials (--trials {job.trials})")
        return study
    if done:
        job.log(f"continuing study '{job.study_name}' ({done} trials so far)")
    layout = trial_layout(job, None if job.trials is None else job.trials - done)
    job.log(f"layout: {layout}")
    job = replace(job, workers=layout.workers, threads=layout.threads)
    if layout.workers == 1:
        run_trials(job, study)
        return study
    jobs = [
        replace(job, worker=i, log=functools.partial(print, flush=True))
        for i in range(layout.workers)
    ]
    run_workers(_worker_trials, jobs, layout.threads)
    return study


def trial_layout(job: TuneJob, trials_left: int | None) -> Any:
    """The job's ``TrialLayout``: its flags, the config's threads and device."""
    from tunedet.engine.build import resolve_device
    from tunedet.tuning.trial_workers import choose_layout

    cfg = load_config(job.config, job.base_overrides)
    device = resolve_device(cfg.device).type
    return choose_layout(job.workers, job.threads, cfg.threads, device, trials_left)


def _worker_trials(job: TuneJob) -> None:
    """One worker process's part of the study (``trial_workers.run_workers``' target)."""
    run_trials(job, load_study(job))


def run_trials(job: TuneJob, study: Any) -> None:
    """This process's trials: until the study's count (running trials of other workers
    included) reaches ``job.trials``, or ``timeout_min`` passes."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from tunedet.engine.finite_guard import NonFiniteLossError

    callbacks = []
    if job.trials is not None:
        # running trials count: another worker's trial in flight will finish the study
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        callbacks.append(MaxTrialsCallback(job.trials, states=states))
    study.optimize(
        lambda trial: run_trial(job, trial),
        n_trials=None if job.trials is None else max(job.trials - counted(study), 1),
        timeout=job.timeout_min * 60 if job.timeout_min else None,
        callbacks=callbacks,
        catch=(NonFiniteLossError, ConfigError),
        gc_after_trial=True,
    )


def results_table(study: Any, space: SearchSpace) -> str:
    """Markdown table of the study's trials, best first; pruned trials show their last
    reported value and iteration, failed ones their state."""
    from optuna.trial import TrialState

    keys = [p.key for p in space.params]
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            value, note = t.value, "complete"
        elif t.state == TrialState.PRUNED and t.intermediate_values:
            step = max(t.intermediate_values)
            value, note = t.intermediate_values[step], f"pruned at {step}"
        else:
            value, note = None, t.state.name.lower()
        params = params_from_optuna(space, t.params)
        minutes = t.user_attrs.get("minutes")
        rows.append((t, value, note, params, minutes))
    order = {"complete": 0}
    rows.sort(key=lambda r: (order.get(r[2], 1), -(r[1] if r[1] is not None else -math.inf)))
    head = ["trial", space.metric, "state", *keys, "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t, value, note, params, minutes in rows:
        cells = [str(t.number), "" if value is None else f"{value:.4f}", note]
        cells += [_short({k: params[k]})[k] if k in params else "–" for k in keys]
        cells.append("" if minutes is None else f"{minutes:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_best_config(study: Any, job: TuneJob) -> tuple[Path, list[str]] | None:
    """The best trial's fully resolved config as YAML in ``OUT/best_config.yaml``; returns
    the path and the trial's overrides, or None when no trial completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = params_from_optuna(job.space, study.best_trial.params)
    cfg = trial_config(job, best)
    path = job.out / "best_config.yaml"
    header = (
        f"# best of study '{job.study_name}': trial {study.best_trial.number}, "
        f"{job.space.metric}={study.best_value:.4f}\n"
    )
    path.write_text(header + config_to_yaml(cfg))
    return path, overrides_for(best)
