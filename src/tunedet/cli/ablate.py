"""``tunedet ablate CONFIG --tricks warmup,cosine,ema [overrides]``: the baseline and each
trick toggled alone, over several seeds (see ``tunedet.tuning.ablation``). Prints and
writes ``OUT/ablation.md``, ``OUT/ablation.json`` and the bar chart ``OUT/ablation.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must list distinct integers, got '{text}'")
    return seeds


def cmd_ablate(args: argparse.Namespace) -> int:
    from tunedet.config.loader import load_config
    from tunedet.tuning.ablation import (
        default_jobs,
        format_table,
        plan_runs,
        plot_ablation,
        resolve_tricks,
        run_all,
        summarize,
    )

    seeds = _seeds(args.seeds)
    baseline = load_config(args.config, args.overrides)
    iters = args.iters or baseline.train.max_iters
    if iters is None:
        raise ValueError("the config has no train.max_iters: pass --iters N (same for every run)")
    tricks = resolve_tricks(args.tricks, baseline, iters)
    n_runs = (len(tricks) + 1) * len(seeds)
    jobs = args.jobs or default_jobs(n_runs)
    threads = args.threads or 1
    out = Path(args.out or Path("runs/ablate") / Path(args.config).stem)
    runs = plan_runs(args.config, args.overrides, tricks, seeds, iters, out, threads)
    for trick in tricks:
        print(f"{trick.change:>10}: {' '.join(trick.overrides)}")
    print(
        f"{n_runs} runs of {iters} iterations, {jobs} at a time ({threads} thread(s) each) in {out}"
    )
    results = run_all(args.config, runs, jobs)

    rows = summarize(results, tricks, seeds)
    table = format_table(rows, seeds, iters)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table + "\n")
    per_run = [{"name": n, "seed": s, **m} for (n, s), m in results.items()]
    (out / "ablation.json").write_text(json.dumps({"rows": rows, "runs": per_run}, indent=1))
    print(f"bar chart: {plot_ablation(rows, len(seeds), out / 'ablation.png')}")
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablate", help="baseline vs each trick toggled alone, over seeds: ΔAP table and bar chart"
    )
    p.add_argument("config", help="config path or built-in name (retinanet/demo)")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    p.add_argument(
        "--tricks",
        required=True,
        help="comma-separated built-in tricks (warmup,cosine,ema,giou,atss,hflip) or a tricks YAML",
    )
    p.add_argument("--seeds", default="0", help="comma-separated seeds (0)")
    p.add_argument("--iters", type=int, help="iterations of every run (default: train.max_iters)")
    p.add_argument("--jobs", type=int, help="runs at a time (default: one per core)")
    p.add_argument("--threads", type=int, help="torch threads per run (1)")
    p.add_argument("--out", help="output folder (default: runs/ablate/<config name>)")
    p.set_defaults(func=cmd_ablate)
