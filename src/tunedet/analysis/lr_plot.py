"""``tunedet analyze lr CONFIG [overrides] --out lr.png``: the config's LR schedule as a PNG.

Top: lr against iteration over the whole run, the warmup shaded. Bottom left: a zoom
on the warmup and the hand-over to the main policy. Bottom right: momentum (or
Adam's beta1) when the policy cycles it (one-cycle), else lr on a log axis, where
step decays spanning decades are visible. The schedule is the one the trainer builds
(``engine.build``: run length, base LR and schedule), with the linear scaling rule over
the effective batch ``batch_size · world_size · accumulate`` when ``optim.auto_scale_lr``
is set (``--world-size``: the processes of the torchrun job the plot is for).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

MAX_POINTS = 200_000


def schedule_iterations(max_iters: int) -> np.ndarray:
    """Every iteration up to ``MAX_POINTS``; a regular subsample (ends included) beyond."""
    if max_iters <= MAX_POINTS:
        return np.arange(max_iters + 1)
    return np.unique(np.linspace(0, max_iters, MAX_POINTS).round().astype(np.int64))


def run_length(cfg: Any, max_iters: int | None = None, world_size: int = 1) -> int:
    """The run's number of iterations as the trainer computes it (``max_iters`` wins)."""
    from tunedet.engine import build

    if max_iters is not None:
        return max_iters
    train = cfg.train
    if train.max_iters is not None:
        return train.max_iters
    if train.epochs is not None:
        from tunedet.data.build import build_dataset

        size = len(build_dataset(cfg.data.train))
        return build.run_length(cfg, size, world_size).max_iters
    raise ValueError("the config trains for a time budget (train.max_minutes): pass --max-iters")


def base_lr(cfg: Any, world_size: int = 1) -> float:
    """``optim.lr``, times ``batch_size · world_size · accumulate / base_batch`` with
    ``optim.auto_scale_lr`` (``engine.build.base_lr``)."""
    from tunedet.engine import build

    return build.base_lr(cfg, world_size)


def plot_lr_schedule(schedule: Any, max_iters: int, out: str | Path, title: str = "") -> dict:
    """Write the PNG; returns a summary (``lr``: start / end of warmup / final, min, max;
    ``momentum_varies``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    its = schedule_iterations(max_iters)
    lrs = np.array([schedule.lr_at(int(i)) for i in its])
    momenta = [schedule.momentum_at(int(i)) for i in its]
    momentum_varies = momenta[0] is not None and len({round(m, 12) for m in momenta}) > 1
    warmup_iters = min(int(getattr(schedule.warmup, "iters", 0) or 0), max_iters)

    fig = plt.figure(figsize=(10, 7), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.3, 1])
    full, zoom = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0])
    extra = fig.add_subplot(grid[1, 1])

    full.plot(its, lrs, color="tab:blue", lw=1.5)
    if warmup_iters:
        for ax in (full, zoom):
            ax.axvspan(0, warmup_iters, color="tab:orange", alpha=0.15, label="warmup")
    full.set(xlabel="iteration", ylabel="learning rate", xlim=(0, max_iters))
    full.set_title(title or "learning-rate schedule", loc="left")
    full.grid(alpha=0.3)
    if warmup_iters:
        full.legend(loc="upper right")

    span = max(1, min(max_iters, 3 * warmup_iters if warmup_iters else max_iters // 20))
    near = its[its <= span]
    zoom.plot(near, lrs[: len(near)], color="tab:blue", lw=1.5, marker="." if span <= 60 else None)
    zoom.set(xlabel="iteration", ylabel="learning rate", xlim=(0, span))
    zoom.set_title(
        f"warmup zoom: first {span} iterations" if warmup_iters else f"first {span} iterations",
        loc="left",
    )
    zoom.grid(alpha=0.3)

    if momentum_varies:
        extra.plot(its, momenta, color="tab:green", lw=1.5)
        extra.set(xlabel="iteration", ylabel="momentum / beta1", xlim=(0, max_iters))
        extra.set_title("momentum (cycled by the policy)", loc="left")
    else:
        positive = lrs > 0
        extra.semilogy(its[positive], lrs[positive], color="tab:purple", lw=1.5)
        extra.set(xlabel="iteration", ylabel="learning rate (log)", xlim=(0, max_iters))
        extra.set_title("log scale", loc="left")
    extra.grid(alpha=0.3, which="both")

    thousands = FuncFormatter(lambda x, _pos: f"{x / 1000:g}k" if x else "0")
    for ax in (full, zoom, extra):
        ax.xaxis.set_major_locator(MaxNLocator(nbins=10 if ax is full else 5, integer=True))
        if ax.get_xlim()[1] >= 10_000:
            ax.xaxis.set_major_formatter(thousands)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return {
        "lr_start": float(lrs[0]),
        "lr_after_warmup": float(schedule.lr_at(warmup_iters)),
        "lr_final": float(lrs[-1]),
        "lr_min": float(lrs.min()),
        "lr_max": float(lrs.max()),
        "momentum_varies": momentum_varies,
    }


def cmd_lr(args: argparse.Namespace) -> int:
    from tunedet.config.loader import load_config
    from tunedet.engine.build import build_schedule

    cfg = load_config(args.config, args.overrides)
    max_iters = run_length(cfg, args.max_iters, args.world_size)
    schedule = build_schedule(cfg, base_lr(cfg, args.world_size), max_iters)
    warmup, policy = cfg.schedule.warmup.type, cfg.schedule.policy.type
    title = f"{Path(args.config).stem}: warmup {warmup} + {policy}, base lr {schedule.base_lr:g}"
    summary = plot_lr_schedule(schedule, max_iters, args.out, title)
    print(
        f"wrote {args.out}: lr {summary['lr_start']:.4g} at 0, "
        f"{summary['lr_after_warmup']:.4g} after warmup, {summary['lr_final']:.4g} at "
        f"{max_iters} (max {summary['lr_max']:.4g})"
    )
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("lr", help="plot the config's LR (and momentum) schedule")
    parser.add_argument("config", help="config path or built-in name (retinanet/demo)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides: schedule.policy.type=poly")
    parser.add_argument("--out", default="lr.png", help="PNG to write (default: lr.png)")
    parser.add_argument("--max-iters", type=int, help="run length (needed for time budgets)")
    parser.add_argument(
        "--world-size",
        type=int,
        default=1,
        help="processes of the torchrun job (data.batch_size is per process; default 1)",
    )
    parser.set_defaults(func=cmd_lr)
