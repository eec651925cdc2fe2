"""fit's search workers share one SQLite study: each enqueued trial must run once."""

import multiprocessing
import warnings
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("fcntl")


def _ask_and_tell(url: str, out: str, asks: int, worker: int) -> None:
    from tunedet.tuning.fit_search import _study_lock
    from tunedet.tuning.study import open_storage

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    taken = []
    for _ in range(asks):
        with _study_lock(Path(out)):
            trial = study.ask()
        taken.append(trial.suggest_float("x", 0, 100))
        study.tell(trial, 0.0)
    (Path(out) / f"taken{worker}.txt").write_text(" ".join(map(str, taken)))


def test_workers_asking_at_once_never_take_the_same_enqueued_trial(tmp_path):
    from tunedet.tuning.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    workers, asks = 3, 8
    for i in range(workers * asks):
        study.enqueue_trial({"x": float(i)})
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_ask_and_tell, args=(url, str(tmp_path), asks, worker))
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    # without the lock, a worker that took a trial another had finished dies on its tell
    assert [p.exitcode for p in processes] == [0] * workers
    taken = [
        float(x) for w in range(workers) for x in (tmp_path / f"taken{w}.txt").read_text().split()
    ]
    assert sorted(taken) == [float(i) for i in range(workers * asks)]
