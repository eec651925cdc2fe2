"""``tunedet ablate``: the baseline and the baseline with each trick toggled alone.

A trick is a named list of dotted overrides. "Toggled alone" means: each trick's
overrides are applied to the baseline config by themselves (never combined with
another trick's), and a built-in trick flips its setting relative to the baseline —
it is switched *off* when the baseline has it (the demo recipe has warmup, cosine,
GIoU and ATSS, so those rows remove them) and switched *on* when the baseline lacks
it (EMA, horizontal flips on a recipe without them). The table says which way each
row went. Every run (baseline and tricks) has the same iterations, data, and seeds;
only the trick's keys differ.

Built-in tricks (what "on" and "off" mean):

- ``warmup``: linear warmup over 1/12 of the run from factor 0.001 / ``{type: none}``
- ``cosine``: cosine decay (floor 0.05) / step decay ×0.1 at 2/3 and 8/9 of the run
- ``ema``: EMA of the weights for evaluation (decay 0.999, tau 200) / none
- ``giou``: GIoU loss on decoded boxes (weight 2) / smooth L1 on deltas (weight 1)
- ``atss``: ATSS assigner (top-9) / max-IoU assigner (0.5 / 0.4)
- ``hflip``: horizontal flips (p = 0.5) in the training transforms / none
- ``mosaic``: Mosaic (p = 0.5, canvas = the training input size: the ``resize`` size,
  else the dataset's ``image_size``, else 640) first in the training transforms / none
- ``mixup``: MixUp (p = 0.5, λ ~ Beta(1.5, 1.5)) first in the training transforms / none

A tricks YAML gives tricks with parameters: ``name: [override, ...]`` for a custom
trick, ``name: null`` for a built-in one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunedet.config.loader import ConfigError, load_config, read_yaml


@dataclass(frozen=True)
class BuiltinTrick:
    """``is_on(cfg)`` says whether the baseline has the trick; ``on(cfg, iters)`` and
    ``off(cfg, iters)`` return the overrides that add / remove it."""

    is_on: Callable[[Any], bool]
    on: Callable[[Any, int], list[str]]
    off: Callable[[Any, int], list[str]]


def _train_transforms(cfg: Any) -> list[dict[str, Any]]:
    return [t.model_dump() for t in cfg.data.train_transforms]


def _without_hflip(cfg: Any, iters: int) -> list[str]:
    kept = [t for t in _train_transforms(cfg) if t["type"] != "hflip"]
    return [f"data.train_transforms={json.dumps(kept)}"]


def _with_hflip(cfg: Any, iters: int) -> list[str]:
    return [
        f"data.train_transforms={json.dumps([{'type': 'hflip', 'p': 0.5}, *_train_transforms(cfg)])}"
    ]


def _input_size(cfg: Any) -> int:
    for t in _train_transforms(cfg):
        if t["type"] == "resize" and t["size"] is not None:
            return int(t["size"])
    return int(getattr(cfg.data.train, "image_size", 640))


def _transform_trick(name: str, make: Callable[[Any], dict[str, Any]]) -> BuiltinTrick:
    """A training transform switched on (put first) or off (removed)."""

    def on(cfg: Any, iters: int) -> list[str]:
        return [f"data.train_transforms={json.dumps([make(cfg), *_train_transforms(cfg)])}"]

    def off(cfg: Any, iters: int) -> list[str]:
        kept = [t for t in _train_transforms(cfg) if t["type"] != name]
        return [f"data.train_transforms={json.dumps(kept)}"]

    return BuiltinTrick(lambda cfg: any(t["type"] == name for t in _train_transforms(cfg)), on, off)


BUILTIN_TRICKS: dict[str, BuiltinTrick] = {
    "warmup": BuiltinTrick(
        lambda cfg: cfg.schedule.warmup.type != "none",
        lambda cfg, iters: [
            f"schedule.warmup={{type: linear, iters: {max(1, iters // 12)}, factor: 0.001}}"
        ],
        lambda cfg, iters: ["schedule.warmup={type: none}"],
    ),
    "cosine": BuiltinTrick(
        lambda cfg: cfg.schedule.policy.type == "cosine",
        lambda cfg, iters: ["schedule.policy={type: cosine, alpha: 0.05}"],
        lambda cfg, iters: [
            f"schedule.policy={{type: multistep, steps: [{iters * 2 // 3}, {iters * 8 // 9}], gamma: 0.1}}"
        ],
    ),
    "ema": BuiltinTrick(
        lambda cfg: cfg.train.ema is not None,
        lambda cfg, iters: ["train.ema={decay: 0.999, tau: 200}"],
        lambda cfg, iters: ["train.ema=null"],
    ),
    "giou": BuiltinTrick(
        lambda cfg: cfg.model.box_loss.type == "giou",
        lambda cfg, iters: ["model.box_loss={type: giou}", "model.box_loss_weight=2.0"],
        lambda cfg, iters: ["model.box_loss={type: smooth_l1}", "model.box_loss_weight=1.0"],
    ),
    "atss": BuiltinTrick(
        lambda cfg: cfg.model.assigner.type == "atss",
        lambda cfg, iters: ["model.assigner={type: atss, topk: 9}"],
        lambda cfg, iters: ["model.assigner={type: max_iou, pos_iou_thr: 0.5, neg_iou_thr: 0.4}"],
    ),
    "hflip": BuiltinTrick(
        lambda cfg: any(t["type"] == "hflip" for t in _train_transforms(cfg)),
        _with_hflip,
        _without_hflip,
    ),
    "mosaic": _transform_trick(
        "mosaic", lambda cfg: {"type": "mosaic", "p": 0.5, "size": _input_size(cfg)}
    ),
    "mixup": _transform_trick("mixup", lambda cfg: {"type": "mixup", "p": 0.5, "alpha": 1.5}),
}


@dataclass(frozen=True)
class Trick:
    name: str
    overrides: tuple[str, ...]
    change: str  # "+name" (switched on), "-name" (switched off) or "custom"


def resolve_tricks(spec: str, baseline: Any, iters: int) -> list[Trick]:
    """``spec``: comma-separated built-in names, or a YAML file (see the module docstring).
    Built-ins are resolved against the baseline config (toggled relative to it)."""
    if spec.endswith((".yaml", ".yml")):
        data = read_yaml(Path(spec))
        if not data:
            raise ConfigError(f"{spec}: no tricks")
        items = list(data.items())
        source = spec
    else:
        items = [(name.strip(), None) for name in spec.split(",") if name.strip()]
        source = "--tricks"
    if not items:
        raise ValueError("--tricks is empty: name at least one trick")
    tricks = []
    for name, value in items:
        if name == "baseline" or any(t.name == name for t in tricks):
            raise ConfigError(f"{source}: trick '{name}' is reserved or listed twice")
        if value is None:
            if name not in BUILTIN_TRICKS:
                known = ", ".join(BUILTIN_TRICKS)
                raise ConfigError(
                    f"{source}: unknown built-in trick '{name}' (built-in: {known}; "
                    "give other tricks as overrides in a tricks YAML)"
                )
            trick = BUILTIN_TRICKS[name]
            on = trick.is_on(baseline)
            overrides = trick.off(baseline, iters) if on else trick.on(baseline, iters)
            tricks.append(Trick(name, tuple(overrides), f"-{name}" if on else f"+{name}"))
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, str) and "=" in v for v in value)
        ):
            tricks.append(Trick(name, tuple(value), "custom"))
        else:
            raise ConfigError(
                f"{source}: trick '{name}' must be null (built-in) or a list of key=value overrides"
            )
    return tricks


@dataclass(frozen=True)
class AblationRun:
    name: str
    seed: int
    overrides: tuple[str, ...]  # full override list for load_config
    run_dir: str


def plan_runs(
    config: str,
    base_overrides: list[str],
    tricks: list[Trick],
    seeds: list[int],
    iters: int,
    out: Path,
    threads: int,
) -> list[AblationRun]:
    """Every (baseline or trick) × seed run, each config validated before any training."""
    fixed = [
        *base_overrides,
        f"train.max_iters={iters}",
        "train.epochs=null",
        "train.max_minutes=null",
        "train.progress=false",
        "train.ckpt_every=0",
        f"threads={threads}",
    ]
    runs = []
    for name, extra in [("baseline", ()), *[(t.name, t.overrides) for t in tricks]]:
        for seed in seeds:
            overrides = (*fixed, *extra, f"seed={seed}")
            try:
                load_config(config, overrides)
            except ConfigError as error:
                raise ConfigError(f"trick '{name}': {error}") from None
            runs.append(AblationRun(name, seed, overrides, str(out / name / f"seed{seed}")))
    return runs


def train_one(config: str, run: AblationRun) -> dict[str, float]:
    """One training run (in a worker process); its final validation metrics. A re-run
    resumes from the run's final checkpoint, so an interrupted ablation continues."""
    from tunedet.engine.trainer import Trainer

    cfg = load_config(config, run.overrides)
    return Trainer(cfg, run.run_dir, log=lambda *_: None).train()


def run_all(config: str, runs: list[AblationRun], jobs: int, log: Any = print) -> dict:
    """{(name, seed): metrics}, ``jobs`` runs at a time in separate processes."""
    from tqdm import tqdm

    results: dict[tuple[str, int], dict[str, float]] = {}
    bar = tqdm(total=len(runs), desc="ablate", dynamic_ncols=True)
    if jobs == 1:
        for run in runs:
            results[(run.name, run.seed)] = train_one(config, run)
            bar.update(1)
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no forked torch thread pools
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(train_one, config, run): run for run in runs}
            for future in futures:
                run = futures[future]
                results[(run.name, run.seed)] = future.result()
                bar.update(1)
    bar.close()
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(results: dict, tricks: list[Trick], seeds: list[int]) -> list[dict[str, Any]]:
    """One row per config: AP and AP50 mean/std over seeds and Δ of the means vs baseline."""
    rows = []
    changes = {"baseline": "baseline", **{t.name: t.change for t in tricks}}
    overrides = {"baseline": (), **{t.name: t.overrides for t in tricks}}
    for name in changes:
        row: dict[str, Any] = {
            "name": name,
            "change": changes[name],
            "overrides": list(overrides[name]),
        }
        for metric in ("AP", "AP50"):
            row[metric], row[f"{metric}_std"] = mean_std(
                [results[(name, s)][metric] for s in seeds]
            )
        rows.append(row)
    for row in rows:
        for metric in ("AP", "AP50"):
            row[f"d{metric}"] = row[metric] - rows[0][metric]
    return rows


def format_table(rows: list[dict[str, Any]], seeds: list[int], iters: int) -> str:
    head = (
        f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}), {iters} iterations each; mean ± std"
    )
    lines = [
        head,
        "",
        "| config | change | AP | AP50 | Δ AP | Δ AP50 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = ("", "") if r["name"] == "baseline" else (f"{r['dAP']:+.3f}", f"{r['dAP50']:+.3f}")
        lines.append(
            f"| {r['name']} | {r['change']} | {r['AP']:.3f} ± {r['AP_std']:.3f} | "
            f"{r['AP50']:.3f} ± {r['AP50_std']:.3f} | {delta[0]} | {delta[1]} |"
        )
    return "\n".join(lines)


def plot_ablation(rows: list[dict[str, Any]], n_seeds: int, out: Path) -> Path:
    """Bars of AP50 and AP (mean, error bar = std over seeds), baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["change"] for r in rows]
    x = range(len(rows))
    fig, axes = plt.subplots(
        1, 2, figsize=(max(8, 1.6 * len(rows) + 2), 4.5), constrained_layout=True
    )
    for ax, metric in zip(axes, ("AP50", "AP"), strict=True):
        means = [r[metric] for r in rows]
        stds = [r[f"{metric}_std"] for r in rows]
        colors = ["tab:gray"] + [
            "tab:green" if r[f"d{metric}"] >= 0 else "tab:red" for r in rows[1:]
        ]
        bars = ax.bar(x, means, yerr=stds if n_seeds > 1 else None, color=colors, capsize=4)
        ax.bar_label(bars, labels=[f"{m:.3f}" for m in means], padding=2, fontsize=8)
        ax.set_ylim(0, max([*[m + s for m, s in zip(means, stds, strict=True)], 0.01]) * 1.15)
        ax.axhline(rows[0][metric], color="black", ls="--", lw=1)
        ax.set_xticks(list(x), labels, rotation=30, ha="right")
        ax.set_ylabel(metric)
        ax.set_title(metric, loc="left")
    # one figure title: the two panels' own titles ran into each other on narrow figures
    fig.suptitle(f"mean ± std over {n_seeds} seed(s); dashed: baseline")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def default_jobs(n_runs: int) -> int:
    """One process per available core, never more than the runs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(n_runs, cores or 1))
