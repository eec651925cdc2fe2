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

import numpy as np

from tunedet.analysis.inputs import plt, save_figure

TRAIN_META_KEYS = ("step", "lr", "time")
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
    """``{"loss": {term: (steps, values)}, "lr": {"lr": ...}, "val": {metric: ...}}``."""
    series: dict[str, dict[str, tuple[list, list]]] = {"loss": {}, "lr": {}, "val": {}}
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
    return series


def plot_run_curves(rows: list[dict[str, Any]], out: str | Path, title: str = "") -> Path | None:
    """Loss terms (log scale), learning rate and validation metrics against iteration.

    Returns None (and writes nothing) when the log has no training rows.
    """
    series = split_series(rows)
    if not series["loss"]:
        return None
    panels = ["loss", "lr"] + (["val"] if series["val"] else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, (steps, values) in series[panel].items():
            few = len(steps) <= 3  # one final evaluation: show the point
            width = 2.2 if name == "loss" else 1.2
            label = "loss (total)" if name == "loss" else name
            ax.plot(steps, values, marker="o" if few else None, linewidth=width, label=label)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    loss_ax, lr_ax = axes[0][0], axes[0][1]
    positive = all(
        v > 0 for _, values in series["loss"].values() for v in values if not math.isnan(v)
    )
    if positive:
        loss_ax.set_yscale("log")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Training loss (total and terms)")
    loss_ax.legend(fontsize=8)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_title("Learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if series["val"]:
        val_ax = axes[0][2]
        val_ax.set_ylabel("metric value")
        val_ax.set_title("Validation metrics")
        values = [v for _, vs in series["val"].values() for v in vs if not math.isnan(v)]
        if values and min(values) >= 0 and max(values) <= 1:
            val_ax.set_ylim(0, max(0.05, float(np.max(values)) * 1.15))
        val_ax.legend(fontsize=8)
        val_ax.set_xlim(loss_ax.get_xlim())  # same iterations as the loss
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
