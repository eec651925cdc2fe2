"""``tunedet analyze lr-finder CONFIG``: the LR range test (Smith 2017, "Cyclical Learning
Rates", section 3.3), a PNG of loss against LR and a suggested base LR.

A fresh model of the config (its optimizer, data and augmentation; no warmup or
schedule) trains one batch per step while the LR grows exponentially,
``lr_i = start · (end/start)^(i/(iters-1))``. The loss is smoothed by a bias-corrected
exponential average, ``s_i = (β s_{i-1} + (1-β) loss_i) / (1 - β^(i+1))`` (β = 0.98),
and the sweep stops once the smoothed loss exceeds ``diverge`` × its minimum or a
loss is not finite. Two suggestions:

- ``min/10`` (the default): a tenth of the LR at the smoothed loss's minimum, the
  largest LR that is still clearly below the point where training stops improving;
- ``steepest``: the LR where the smoothed loss falls fastest per unit log(lr), the slope
  taken over a centred window of ±n/20 steps and searched before the minimum.

Nothing is read from or written to a run directory: checkpoints are never touched.
The suggestion is for the config's optimizer at its batch size, used with the
config's warmup.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RULES = ("min/10", "steepest")


@dataclass
class LRFinderResult:
    lrs: np.ndarray  # (n,) the LR of every step run
    losses: np.ndarray  # (n,) raw total loss (nan when not finite)
    smoothed: np.ndarray  # (n,) bias-corrected exponential average of the loss
    stopped: str  # "end" (all iters ran), "diverged" or "non-finite"

    def suggestion(self, rule: str) -> float:
        return suggest_lr(self.lrs, self.smoothed, rule)


def sweep_lrs(start: float, end: float, iters: int) -> np.ndarray:
    """(iters,) exponentially spaced LRs from ``start`` to ``end`` (both included)."""
    if not (0 < start < end):
        raise ValueError(f"need 0 < --start < --end, got start={start}, end={end}")
    if iters < 2:
        raise ValueError(f"--iters must be at least 2, got {iters}")
    return start * (end / start) ** (np.arange(iters) / (iters - 1))


def smooth_losses(losses: np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average (Adam's correction) of ``losses`` (n,)."""
    avg, out = 0.0, np.empty(len(losses))
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out[i] = avg / (1 - beta ** (i + 1))
    return out


def suggest_lr(lrs: np.ndarray, smoothed: np.ndarray, rule: str = "min/10") -> float:
    """The suggested base LR of a sweep (see the module docstring for the two rules)."""
    if len(lrs) < 2:
        raise ValueError("the sweep stopped after fewer than 2 steps: lower --start")
    if rule == "min/10":
        return float(lrs[int(np.argmin(smoothed))] / 10)
    if rule == "steepest":
        # Slope per unit log(lr) over a centred window of ±k steps (single-step slopes of
        # a noisy curve are noise), searched only up to the smoothed minimum.
        n, k = len(lrs), max(1, len(lrs) // 20)
        log_lr = np.log(lrs)
        centres = np.arange(k, min(int(np.argmin(smoothed)), n - 1 - k) + 1)
        if len(centres) == 0:
            raise ValueError("the smoothed loss never falls: widen the sweep (--start lower)")
        slope = (smoothed[centres + k] - smoothed[centres - k]) / (
            log_lr[centres + k] - log_lr[centres - k]
        )
        return float(lrs[centres[int(np.argmin(slope))]])
    raise ValueError(f"unknown rule '{rule}' (choose from {', '.join(RULES)})")


def run_lr_finder(
    cfg: Any,
    start: float = 1e-6,
    end: float = 1.0,
    iters: int = 100,
    diverge: float = 4.0,
    beta: float = 0.98,
    progress: bool = True,
) -> LRFinderResult:
    """Run the range test on a fresh model of ``cfg`` (see the module docstring)."""
    import torch
    from tqdm import tqdm

    from tunedet.data.build import build_dataset
    from tunedet.engine.build import (
        build_optimizer_for,
        resolve_device,
        seed_everything,
        train_loader,
    )
    from tunedet.engine.optim import clip_gradients
    from tunedet.models import build_detector
    from tunedet.models.detectors import loss_extras

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    device = resolve_device(cfg.device)
    dataset = build_dataset(cfg.data.train)
    model = build_detector(cfg.model.model_dump()).to(device).train()
    optimizer = build_optimizer_for(cfg, model)  # as training builds it (effective batch)
    # Parameter groups may scale the base LR (param_multipliers): keep their ratios.
    base = float(optimizer.defaults["lr"])
    ratios = [group["lr"] / base for group in optimizer.param_groups]
    loader = train_loader(cfg, dataset)
    lrs = sweep_lrs(start, end, iters)
    losses: list[float] = []
    best, stopped = math.inf, "end"
    batches = iter(loader)
    for lr in tqdm(lrs, desc="lr-finder", disable=not progress):
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        try:
            batch = next(batches)
        except StopIteration:  # a dataset smaller than iters batches: start another pass
            batches = iter(loader)
            batch = next(batches)
        batch = batch.to(device)
        optimizer.zero_grad(set_to_none=True)
        extras = loss_extras(model, batch)
        total = sum(model.loss(batch.images, batch.gt_boxes, batch.gt_labels, **extras).values())
        loss = float(total.detach())
        if not math.isfinite(loss):
            stopped = "non-finite"
            break
        total.backward()
        clip_gradients(model, cfg.train.grad_clip)
        optimizer.step()
        losses.append(loss)
        value = float(smooth_losses(np.asarray(losses), beta)[-1])
        best = min(best, value)
        if value > diverge * best:
            stopped = "diverged"
            break
    smoothed = smooth_losses(np.asarray(losses), beta)
    if stopped == "non-finite":  # the sweep's last lr, with no finite loss to smooth
        losses, smoothed = [*losses, math.nan], np.append(smoothed, math.nan)
    n = len(losses)
    return LRFinderResult(lrs[:n], np.array(losses), smoothed, stopped)


def plot_lr_finder(result: LRFinderResult, suggestions: dict[str, float], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(result.smoothed)
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    ax.plot(result.lrs, result.losses, color="tab:gray", alpha=0.4, lw=1, label="loss")
    ax.plot(result.lrs[finite], result.smoothed[finite], color="tab:blue", lw=2, label="smoothed")
    colors = {"min/10": "tab:green", "steepest": "tab:orange"}
    for rule, lr in suggestions.items():
        ax.axvline(lr, color=colors[rule], ls="--", label=f"{rule}: {lr:.2g}")
    ax.set_xscale("log")
    if finite.any():  # keep the divergence from squashing the interesting part
        low = min(np.nanmin(result.smoothed) * 0.9, np.nanmin(result.losses) * 0.97)
        ax.set_ylim(low, max(result.smoothed[finite][0], low) * 1.5)
    ax.set(xlabel="learning rate", ylabel="training loss")
    ax.set_title(f"LR range test ({len(result.lrs)} steps, stop: {result.stopped})", loc="left")
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def cmd_lr_finder(args: argparse.Namespace) -> int:
    from tunedet.config.loader import load_config

    cfg = load_config(args.config, args.overrides)
    result = run_lr_finder(cfg, args.start, args.end, args.iters, args.diverge)
    suggestions, failures = {}, {}
    for rule in RULES:
        try:
            suggestions[rule] = result.suggestion(rule)
        except ValueError as error:
            failures[rule] = str(error)
    if args.rule in failures:
        raise ValueError(f"no {args.rule} suggestion: {failures[args.rule]}")
    path = plot_lr_finder(result, suggestions, Path(args.out))
    print(
        f"swept {len(result.lrs)} steps from {result.lrs[0]:.3g} to {result.lrs[-1]:.3g} "
        f"(stop: {result.stopped}); plot: {path}"
    )
    for rule in RULES:
        if rule != args.rule:
            found = f"lr {suggestions[rule]:.3g}" if rule in suggestions else failures[rule]
            print(f"{rule}: {found}")
    rule = args.rule
    print(
        f"suggested base lr ({rule}): {suggestions[rule]:.3g}  (config optim.lr: {cfg.optim.lr:g})"
    )
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lr-finder", help="LR range test: loss against an exponential LR sweep, a suggested LR"
    )
    p.add_argument("config", help="config path or built-in name (retinanet/demo)")
    p.add_argument("overrides", nargs="*", help="dotted overrides: optim.type=sgd")
    p.add_argument("--start", type=float, default=1e-6, help="first LR (1e-6)")
    p.add_argument("--end", type=float, default=1.0, help="last LR (1)")
    p.add_argument("--iters", type=int, default=100, help="steps of the sweep (100)")
    p.add_argument(
        "--diverge", type=float, default=4.0, help="stop when smoothed loss > this × min (4)"
    )
    p.add_argument("--rule", choices=RULES, default="min/10", help="suggestion rule (min/10)")
    p.add_argument("--out", default="lr_finder.png", help="PNG to write (lr_finder.png)")
    p.set_defaults(func=cmd_lr_finder)
