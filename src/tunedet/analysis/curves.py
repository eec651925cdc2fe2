"""``tunedet analyze curves RUN_DIR``: loss terms, learning rate and validation metrics of a run.

Reads the run's ``metrics.jsonl`` (one JSON object per logged step: training
rows carry ``loss`` and its terms, ``lr``, ``time``; evaluation rows carry
``val/<metric>``). Non-finite values, written as strings by the logger, are
read back as NaN and leave gaps in the lines.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from tunedet.analysis.inputs import plt, save_figure

TRAIN_META_KEYS = ("step", "lr", "time")
# training-row quantities that are not loss terms: each gets its own panel (a counter such as
# ``skipped`` only when it is ever non-zero)
NOT_LOSSES = ("skipped", "epoch", "momentum", "grad_norm", "images_per_s", "memory")
COUNTERS = ("skipped",)
# validation metrics drawn first when present (COCO, then VOC); others fill up to MAX_VAL_LINES
PREFERRED_VAL = ("AP", "AP50", "AP75", "APs", "APm", "APl", "mAP")
MAX_VAL_LINES = 6


def read_metrics_log(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl``; ``"nan"`` / ``"inf"`` strings become floats. [] if absent.

    A torn last line (no newline: the run was killed mid-write) is left out; any other
    line that is not JSON is a ``ValueError`` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON row ({err.msg})") from None
        for key, value in row.items():
            if value in ("nan", "inf", "-inf"):
                row[key] = float(value)
        rows.append(row)
    return rows


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def split_series(rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple[list, list]]]:
    """``{"loss": {term: (steps, values)}, "lr": {"lr": ...}, "other": {quantity: ...},
    "val": {metric: ...}}`` (``other``: training-row values that are not losses)."""
    series: dict[str, dict[str, tuple[list, list]]] = {"loss": {}, "lr": {}, "other": {}, "val": {}}
    for row in rows:
        step = row.get("step")
        if step is None:
            continue
        for key, value in row.items():
            if key in ("step", "time") or not _numeric(value):
                continue
            if key.startswith("val/"):
                group, name = "val", key[4:]
                if value == -1:  # COCO's "nothing to measure" (no GT in that size range)
                    value = float("nan")
            elif key == "lr":
                group, name = "lr", key
            elif key in NOT_LOSSES:
                group, name = "other", key
            else:
                group, name = "loss", key
            steps, values = series[group].setdefault(name, ([], []))
            steps.append(step)
            values.append(float(value))
    series["val"] = {  # drop metrics never measured (all NaN)
        n: sv for n, sv in series["val"].items() if not all(math.isnan(v) for v in sv[1])
    }
    names = list(series["val"])
    chosen = [n for n in PREFERRED_VAL if n in series["val"]]
    chosen += [n for n in names if n not in chosen][: max(0, MAX_VAL_LINES - len(chosen))]
    series["val"] = {n: series["val"][n] for n in chosen[:MAX_VAL_LINES]}
    series["other"] = {  # a counter that never counted says nothing
        n: sv for n, sv in series["other"].items() if n not in COUNTERS or any(sv[1])
    }
    return series


def plot_run_curves(rows: list[dict[str, Any]], out: str | Path, title: str = "") -> Path | None:
    """One panel per quantity against iteration: the total loss, each loss term (log scale
    when it spans more than a decade), the learning rate, other logged quantities, each validation metric.

    Returns None (and writes nothing) when the log has no training rows.
    """
    series = split_series(rows)
    if not series["loss"]:
        return None
    losses = sorted(series["loss"], key=lambda name: name != "loss")  # the total first
    panels = [("loss", name) for name in losses]
    panels += [("lr", "lr")] + [("other", name) for name in series["other"]]
    panels += [("val", name) for name in series["val"]]
    cols = min(4, len(panels))
    rows_ = -(-len(panels) // cols)
    fig, axes = plt.subplots(
        rows_, cols, figsize=(3.6 * cols, 2.8 * rows_ + 0.4), squeeze=False, sharex=True
    )
    colours = {"loss": "tab:red", "lr": "tab:purple", "other": "tab:grey", "val": "tab:blue"}
    for ax, (group, name) in zip(axes.flat, panels, strict=False):
        steps, values = series[group][name]
        few = len(steps) <= 3  # one final evaluation: show the point
        ax.plot(steps, values, marker="o" if few else None, color=colours[group], linewidth=1.4)
        finite = [v for v in values if not math.isnan(v)]
        if group == "loss":
            ax.set_title("loss (total)" if name == "loss" else f"loss: {name}", fontsize=10)
            if finite and min(finite) > 0 and max(finite) > 10 * min(finite):
                ax.set_yscale("log")  # a loss falling by decades
        elif group == "lr":
            ax.set_title("learning rate", fontsize=10)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        elif group == "val":
            ax.set_title(f"validation {name}", fontsize=10)
            if finite and min(finite) >= 0 and max(finite) <= 1:
                ax.set_ylim(0, max(0.05, max(finite) * 1.15))
        else:
            ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("iteration")
    for ax in axes.flat[len(panels) - cols : len(panels)]:  # bottom panel of each column
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)


def run(args: argparse.Namespace) -> int:
    source = Path(args.run)
    log = source if source.is_file() else source / "metrics.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{log}: no metrics.jsonl (pass a run directory or the file)")
    out = Path(args.out) if args.out else log.parent / "curves.png"
    written = plot_run_curves(read_metrics_log(log), out, title=f"run {log.parent}")
    if written is None:
        raise ValueError(f"{log} has no training rows (no 'loss' logged yet)")
    print(f"wrote {written}")
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "curves", help="loss terms, LR and validation metrics from a run's metrics.jsonl"
    )
    p.add_argument("run", help="run directory (or its metrics.jsonl)")
    p.add_argument("--out", help="PNG to write (default: RUN/curves.png)")
    p.set_defaults(func=run)
