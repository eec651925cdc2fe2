"""``tunedet fit DATA [--budget 15m] [--out DIR]``: a detector configured for DATA by
measurement (``tunedet.tuning.fit``): fingerprint, rules, a small multi-fidelity search,
the final training within the wall-time budget; writes ``OUT/recipe.yaml`` (which
``tunedet train`` reproduces), ``OUT/report.html`` and ``OUT/fit.json``."""

from __future__ import annotations

import argparse
import json


def cmd_fit(args: argparse.Namespace) -> int:
    from tunedet.tuning.fit import fit, parse_budget

    parse_budget(args.budget)  # a bad budget fails before the data is read
    result = fit(
        args.data,
        budget=args.budget,
        out=args.out,
        val=args.val,
        overhead=args.overhead,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        workers=args.workers,
        storage=args.storage,
        search=not args.no_search,
        progress=args.progress,
    )
    print(json.dumps({k: round(v, 4) for k, v in result.metrics.items() if "/" not in k}))
    if args.rank_check:
        from tunedet.tuning.fit import rank_agreement

        rank = rank_agreement(result.out)
        print(
            f"rank agreement: Spearman rho {rank['spearman']:.2f} over {len(rank['runs'])} "
            f"trials trained again for {rank['iterations']} iterations; report: {result.report}"
        )
    if args.seed_check:
        from tunedet.tuning.fit import seed_spread

        spread = seed_spread(result.out, args.seed_check)
        ap, ap50 = spread["AP"], spread["AP50"]
        print(
            f"seed spread over {len(spread['runs'])} runs: AP {ap['mean']:.4f} ± {ap['std']:.4f}, "
            f"AP50 {ap50['mean']:.4f} ± {ap50['std']:.4f}; report: {result.report}"
            if ap["std"] is not None
            else f"one run: AP {ap['mean']:.4f}, AP50 {ap50['mean']:.4f}; report: {result.report}"
        )
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fit",
        help="configure and train a detector for a dataset within a wall-time budget",
        description=(
            "Fingerprint DATA, set the recipe's knobs by rules (each stated with its "
            "measurement), search the knobs the rules leave open, train the final model "
            "with the rest of the budget. DATA: a COCO .json, a VOC folder or a data.yaml."
        ),
    )
    p.add_argument("data", help="COCO .json, VOC folder, or ultralytics data.yaml")
    p.add_argument("--budget", default="15m", help="wall time up to the final model: 15m, 90s, 1h")
    p.add_argument("--out", default="runs/fit", help="output folder (default: runs/fit)")
    p.add_argument("--val", help="validation data (default: data.yaml's val, else held out)")
    p.add_argument(
        "--overhead",
        choices=["yes", "no", "auto"],
        default="auto",
        help="is the imagery seen from above (rotations valid)? auto: guessed and stated",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, search and training")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: all); alone, the search runs one trial at a time",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="search trials run side by side in processes (default: on a CPU the measured "
        "layout, docs/TUNING.md; 1 on a GPU)",
    )
    p.add_argument("--storage", help="study storage URL (default: sqlite:///OUT/study.db)")
    p.add_argument("--no-search", action="store_true", help="train the rules' recipe only")
    p.add_argument("--progress", action="store_true", help="progress bar for the final training")
    p.add_argument(
        "--rank-check",
        action="store_true",
        help="after the budget: train every search trial again at the final length and "
        "report Spearman's rho between short and full ranks (one training per trial)",
    )
    p.add_argument(
        "--seed-check",
        type=int,
        default=0,
        metavar="N",
        help="after the budget: train the recipe N more times with other seeds on the "
        "training part and report AP mean ± std on the validation split (N trainings)",
    )
    p.set_defaults(func=cmd_fit)
