"""PNG pictures of evaluation results: PR curves, F1 against score, the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_LEGEND_CLASSES = 20


def plot_pr_curves(
    recall_points: Sequence[float],
    per_class: dict[str, Sequence[float | None]],
    mean: Sequence[float | None],
    out: str | Path,
    iou_thr: float = 0.5,
) -> Path:
    """One line per class (interpolated precision vs recall) and a thick line for their mean.

    `per_class` values are 101-point interpolated precisions (None / NaN for a
    class without GT, which is left out); the mean curve's area is the AP at `iou_thr`.
    """
    recall = np.asarray(recall_points, dtype=float)
    ap = f"AP{100 * iou_thr:.0f}"
    fig, ax = plt.subplots(figsize=(6.5, 5))
    shown = 0
    for name, values in per_class.items():
        precision = np.array([np.nan if v is None else v for v in values], dtype=float)
        if np.isnan(precision).all():
            continue
        label = f"{name} ({ap} {np.nanmean(precision):.3f})" if shown < MAX_LEGEND_CLASSES else None
        ax.plot(recall, precision, linewidth=1.2, alpha=0.8, label=label)
        shown += 1
    mean_precision = np.array([np.nan if v is None else v for v in mean], dtype=float)
    if not np.isnan(mean_precision).all():
        ax.plot(
            recall,
            mean_precision,
            color="black",
            linewidth=2.5,
            label=f"mean over classes ({ap} {np.nanmean(mean_precision):.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.set_title(f"Precision-recall curves at IoU {iou_thr:.2f}")
    ax.grid(alpha=0.3)
    if shown or not np.isnan(mean_precision).all():
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion_matrix(
    counts: Sequence[Sequence[int]],
    labels: Sequence[str],
    out: str | Path,
    score_thr: float = 0.5,
    iou_thr: float = 0.5,
) -> Path:
    """Counts in each cell, coloured by the fraction of its row (true class)."""
    matrix = np.asarray(counts, dtype=np.int64)
    rows = matrix.sum(axis=1, keepdims=True)
    fraction = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = max(4.5, 0.55 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 30:
        for (i, j), value in np.ndenumerate(matrix):
            colour = "white" if fraction[i, j] > 0.6 else "black"
            ax.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=8)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (score >= {score_thr:.2f}, IoU >= {iou_thr:.2f})")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class's row")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_f1_by_score(
    score: Sequence[float],
    precision: Sequence[float],
    recall: Sequence[float],
    f1: Sequence[float],
    best: tuple[float, float],
    out: str | Path,
    iou_thr: float = 0.5,
) -> Path:
    """F1, precision and recall of all classes pooled against the score threshold, the
    best-F1 threshold marked (``best = (score, F1)``)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    if len(score):
        ax.plot(score, f1, color="tab:blue", linewidth=2.2, label="F1")
        ax.plot(score, precision, color="tab:green", linewidth=1.2, label="precision")
        ax.plot(score, recall, color="tab:orange", linewidth=1.2, label="recall")
        ax.axvline(best[0], color="black", linestyle="--", linewidth=1)
        ax.plot([best[0]], [best[1]], "o", color="tab:blue")
        ax.set_title(
            f"F1 against score (IoU {iou_thr:.2f}): best F1 {best[1]:.3f} at {best[0]:.3f}"
        )
        ax.legend(fontsize=8, loc="lower left")
    else:
        ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"F1 against score (IoU {iou_thr:.2f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("score threshold (detections scoring at least this are kept)")
    ax.set_ylabel("value, all classes pooled")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
