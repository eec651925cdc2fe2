"""``tunedet tune CONFIG SPACE.yaml [overrides]``: hyper-parameter search with Optuna.

See ``tunedet.tuning.study`` (storage, budget, pruning) and ``tunedet.tuning.space``
(the space file). Prints one line per trial, then the results table; writes
``OUT/results.md``, ``OUT/best_config.yaml`` and ``OUT/importance.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_tune(args: argparse.Namespace) -> int:
    from tunedet.engine.interrupt import TrainingInterrupted
    from tunedet.tuning.space import check_against_config, check_metric, load_space
    from tunedet.tuning.study import (
        TuneJob,
        counted,
        default_storage,
        next_free_study,
        optimize,
        redact,
        results_table,
        write_best_config,
    )
    from tunedet.tuning.trial_workers import WorkersInterrupted

    space = load_space(args.space)
    if args.trials is None and args.timeout_min is None:
        raise ValueError("give a budget: --trials N and/or --timeout-min M")
    if args.trials is not None and args.trials < 1:
        raise ValueError(f"--trials must be at least 1, got {args.trials}")
    study_name = args.study or Path(args.config).stem
    out = Path(args.out or Path("runs/tune") / study_name)
    check_against_config(space, args.config, args.overrides)
    check_metric(space, args.config, args.overrides)  # before any trial, not after the first
    if args.new_study:
        study_name, out = next_free_study(study_name, out, args.storage)
        print(f"new study '{study_name}' in {out}")
    out.mkdir(parents=True, exist_ok=True)
    job = TuneJob(
        config=args.config,
        space=space,
        out=out,
        base_overrides=list(args.overrides),
        storage=args.storage or default_storage(out),
        study_name=study_name,
        sampler=args.sampler,
        pruner=args.pruner,
        trials=args.trials,
        timeout_min=args.timeout_min,
        seed=args.seed,
        workers=args.workers,
        threads=args.threads,
    )
    if args.sampler == "grid":
        size = space.grid_size()
        print(f"grid of {size} combinations")
    from tunedet.config.loader import load_config

    if args.pruner != "none" and not load_config(args.config, args.overrides).train.eval_every:
        print("note: train.eval_every is 0, so no trial is evaluated before its end: no pruning")
    print(f"study '{job.study_name}' in {redact(job.storage)}; trial runs in {out / 'trials'}")
    try:
        study = optimize(job)
    except TrainingInterrupted as stop:  # Ctrl-C / SIGTERM: Optuna marked the trial failed
        print(
            f"tunedet tune: interrupted ({stop.args[0].split(':')[0]}); the running trial is "
            "recorded as failed: run the same command again to continue the study",
            file=sys.stderr,
        )
        return stop.exit_code
    except WorkersInterrupted as stop:  # the same, in every trial worker
        print(
            f"tunedet tune: interrupted ({stop}); the running trials are recorded as "
            "failed: run the same command again to continue the study",
            file=sys.stderr,
        )
        return stop.exit_code

    table = results_table(study, space)
    print(table)
    (out / "results.md").write_text(table + "\n")
    best = write_best_config(study, job)
    if best is None:
        print("no trial completed: no best config")
        return 0
    path, overrides = best
    print(f"best: trial {study.best_trial.number}, {space.metric}={study.best_value:.4f}")
    print(f"best config: {path}")
    print(f"best overrides: {' '.join(repr(o) for o in overrides)}")
    _importance(study, space.metric, out)
    print(f"{counted(study)} trials in the study; results: {out / 'results.md'}")
    return 0


def _importance(study, metric: str, out: Path) -> None:
    from optuna.trial import TrialState

    from tunedet.tuning.importance import param_importances, plot_importances

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        print("importance plot needs 2 completed trials: skipped")
        return
    try:
        importances, method = param_importances(study)
    except (RuntimeError, ValueError) as error:  # e.g. no parameter varies across trials
        print(f"importance plot skipped: {error}")
        return
    if not importances:
        print("importance plot skipped: no parameter is shared by all completed trials")
        return
    path = plot_importances(importances, method, metric, len(complete), out / "importance.png")
    shares = ", ".join(f"{k} {v:.2f}" for k, v in importances.items())
    print(f"importance ({method}): {shares}; plot: {path}")


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune", help="search config keys with Optuna (TPE, pruning, SQLite/PostgreSQL studies)"
    )
    p.add_argument("config", help="config path or built-in name (retinanet/demo)")
    p.add_argument("space", help="search-space YAML (see docs/TUNING.md)")
    p.add_argument("overrides", nargs="*", help="fixed dotted overrides for every trial")
    p.add_argument("--trials", type=int, help="total trials of the study (complete + pruned)")
    p.add_argument("--timeout-min", type=float, help="stop starting trials after M minutes")
    p.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///OUT/study.db)")
    p.add_argument("--study", help="study name (default: the config's name)")
    p.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe")
    p.add_argument("--pruner", choices=["median", "halving", "none"], default="median")
    p.add_argument("--seed", type=int, help="sampler seed (default: random)")
    p.add_argument(
        "--workers",
        type=int,
        help="trials run side by side in their own processes on this machine (default: as "
        "many as the cores hold at --threads, at most the trials left; 1 on a GPU)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads per trial (default: the config's threads, else the measured "
        "TRIAL_THREADS; see docs/TUNING.md)",
    )
    p.add_argument("--out", help="output folder (default: runs/tune/<study>)")
    p.add_argument(
        "--new-study",
        action="store_true",
        help="when the study (or OUT) exists, start a new one beside it (<study>-2, OUT-2, ...)"
        " instead of continuing it; a study run with another config, fixed overrides or"
        " space is refused without this",
    )
    p.set_defaults(func=cmd_tune)
