"""Trials per hour of ``tunedet tune`` by trial layout: P processes × T torch threads.

Runs the same short study once per layout through the real command
(``python -m tunedet.cli.main tune retinanet/demo ... --workers P --threads T``): the
demo recipe, the random sampler over the LR alone (it does not change the step's
cost), no pruning, N trials of I iterations each ending with an evaluation on V
validation images. Per layout it prints the command's wall time, trials per hour
(N / wall time, start-up and evaluation included), each trial's seconds per training
iteration (from its ``metrics.jsonl``), the summed training speed of the layout
(P / seconds per iteration) and the torch threads the trials recorded. The verdict
names the layout with the most trials per hour among those that fill the cores and
the ``TRIAL_THREADS`` value that makes it ``tunedet tune``'s default
(``src/tunedet/tuning/trial_workers.py``). ``--repeats R`` runs the layouts R times,
interleaved, and reports the mean (and the spread).

    python benchmarks/trial_layout.py                # 1x2, 2x1, 1x1; 4 trials x 150 iters, 2 repeats
    python benchmarks/trial_layout.py --quick        # smoke run: 2 trials x 10 iters, tiny val
    python benchmarks/trial_layout.py --layouts 1x2,2x1 --trials 6 --iters 300
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SPACE = """\
metric: AP50
params:
  optim.lr: {float: [1.0e-3, 4.0e-3], log: true}
"""


@dataclass
class LayoutRun:
    workers: int
    threads: int
    wall_s: float
    trials: int
    seconds_per_iter: float
    threads_seen: list[int]

    @property
    def trials_per_hour(self) -> float:
        return self.trials / self.wall_s * 3600


def parse_layouts(text: str) -> list[tuple[int, int]]:
    """``"1x2,2x1"`` -> [(1, 2), (2, 1)] (processes, threads)."""
    layouts = []
    for item in text.split(","):
        try:
            workers, threads = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--layouts: '{item}' is not PxT (processes x threads)") from None
        if workers < 1 or threads < 1:
            raise SystemExit(f"--layouts: '{item}' needs P, T >= 1")
        layouts.append((workers, threads))
    return layouts


def run_layout(
    workers: int, threads: int, trials: int, iters: int, val_images: int, work: Path
) -> LayoutRun:
    """One study of ``trials`` trials at this layout, from a fresh folder."""
    import optuna

    out = work / f"{workers}x{threads}"
    shutil.rmtree(out, ignore_errors=True)
    space = work / "space.yaml"
    space.write_text(SPACE)
    command = [
        sys.executable,
        "-m",
        "tunedet.cli.main",
        "tune",
        "retinanet/demo",
        str(space),
        f"train.max_iters={iters}",
        f"train.log_every={iters}",
        "train.eval_every=0",
        "train.ckpt_every=0",
        "train.progress=false",
        f"data.val.num_images={val_images}",
        *(["schedule.warmup.iters=2"] if iters < 100 else []),
        f"--trials={trials}",
        f"--workers={workers}",
        f"--threads={threads}",
        "--sampler=random",
        "--pruner=none",
        "--seed=0",
        f"--out={out}",
    ]
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{workers}x{threads} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    per_iter = []
    for trial in complete:
        rows = (Path(trial.user_attrs["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        timed = [row for row in map(json.loads, rows) if "time" in row]
        per_iter.append(timed[-1]["time"] / iters)
    return LayoutRun(
        workers,
        threads,
        wall,
        len(complete),
        statistics.mean(per_iter),
        sorted({int(t.user_attrs["threads"]) for t in complete}),
    )


def summary_rows(runs: list[LayoutRun]) -> list[dict]:
    """One row per layout: the mean (and spread over repeats) of each measure."""
    rows = []
    layouts = list(dict.fromkeys((r.workers, r.threads) for r in runs))
    for workers, threads in layouts:
        mine = [r for r in runs if (r.workers, r.threads) == (workers, threads)]
        per_hour = [r.trials_per_hour for r in mine]
        rows.append(
            {
                "workers": workers,
                "threads": threads,
                "repeats": len(mine),
                "trials": sum(r.trials for r in mine) // len(mine),
                "wall_s": statistics.mean(r.wall_s for r in mine),
                "trials_per_hour": statistics.mean(per_hour),
                "spread": (max(per_hour) - min(per_hour)) / 2 if len(mine) > 1 else 0.0,
                "seconds_per_iter": statistics.mean(r.seconds_per_iter for r in mine),
                "threads_seen": sorted({t for r in mine for t in r.threads_seen}),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| layout | trials | wall s | trials/hour | s/iter per trial | iter/s, all trials "
        "| threads recorded |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f" ± {r['spread']:.0f}" if r["repeats"] > 1 else ""
        lines.append(
            f"| {r['workers']} × {r['threads']} | {r['trials']} | {r['wall_s']:.1f} | "
            f"{r['trials_per_hour']:.0f}{spread} | {r['seconds_per_iter']:.3f} | "
            f"{r['workers'] / r['seconds_per_iter']:.2f} | "
            f"{', '.join(map(str, r['threads_seen']))} |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict], cores: int) -> str:
    """The layout with the most trials per hour among those that fill the cores (any
    layout when none does), against one trial at a time on every core."""
    full = [r for r in rows if r["workers"] * r["threads"] == cores] or rows
    best = max(full, key=lambda r: r["trials_per_hour"])
    text = (
        f"verdict: {best['workers']} × {best['threads']} gives the most trials per hour "
        f"({best['trials_per_hour']:.0f})"
    )
    alone = next((r for r in rows if r["workers"] == 1 and r["threads"] == cores), None)
    if alone is not None and alone is not best:
        text += f", {best['trials_per_hour'] / alone['trials_per_hour']:.2f}× 1 × {cores}"
    spreads = [r for r in full if r is not best and r["spread"] + best["spread"] > 0]
    close = [
        r
        for r in spreads
        if best["trials_per_hour"] - r["trials_per_hour"] < r["spread"] + best["spread"]
    ]
    if close:
        text += " (within the repeats' spread of " + ", ".join(
            f"{r['workers']} × {r['threads']}" for r in close
        )
        text += ": not a clear difference)"
    return (
        f"{text}; default: TRIAL_THREADS = {best['threads']} in src/tunedet/tuning/trial_workers.py"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", default="1x2,2x1,1x1", help="PxT list (default 1x2,2x1,1x1)")
    parser.add_argument("--trials", type=int, default=4, help="trials per study (4)")
    parser.add_argument("--iters", type=int, default=150, help="iterations per trial (150)")
    parser.add_argument("--val-images", type=int, default=100, help="validation images (100)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each layout (2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 trials x 10 iters")
    parser.add_argument("--work", help="folder for the studies (default: a temporary one)")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.iters, args.val_images, args.repeats = 2, 10, 8, 1
    layouts = parse_layouts(args.layouts)
    work = Path(args.work or tempfile.mkdtemp(prefix="tunedet_layout_"))
    work.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    import torch

    print(
        f"torch {torch.__version__}, {cores} core(s); retinanet/demo (batch 16, 128 px), "
        f"{args.trials} trials x {args.iters} iterations + evaluation on {args.val_images} "
        f"images per study; {args.repeats} repeat(s), layouts interleaved; work: {work}"
    )
    runs = []
    for repeat in range(args.repeats):
        for workers, threads in layouts:
            run = run_layout(workers, threads, args.trials, args.iters, args.val_images, work)
            runs.append(run)
            print(
                f"  repeat {repeat + 1}, {workers} x {threads}: {run.wall_s:.1f} s, "
                f"{run.trials} trials, {run.seconds_per_iter:.3f} s/iter",
                flush=True,
            )
    rows = summary_rows(runs)
    print(format_table(rows))
    print(verdict(rows, cores or 1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
