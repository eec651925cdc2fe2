"""``tunedet analyze focal``: what focal loss's alpha and gamma do, loss and gradient vs p_t.

For one anchor and one class with target t = 1, p_t = sigmoid(x) is the
probability given to the right answer. The focal loss (Lin et al. 2017)
``FL = -α (1 - p_t)^γ log(p_t)`` and its gradient with respect to the logit x
are computed with tunedet's own ``sigmoid_focal_loss`` and autograd over an
α × γ grid; γ = 0 is α-weighted cross-entropy. A negative (t = 0) with the same
p_t = 1 - sigmoid(x) follows the same curves with α replaced by 1 - α, so α
only scales a curve while γ changes its shape: it silences the many easy
examples (p_t near 1) that would otherwise dominate the summed loss.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tunedet.analysis.inputs import plt, save_figure
from tunedet.losses.focal import sigmoid_focal_loss

DEFAULT_ALPHAS = (0.25, 0.5)
DEFAULT_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)  # the paper's Figure 1


def focal_loss_curves(
    alphas: Sequence[float], gammas: Sequence[float], num_points: int = 400
) -> dict[str, np.ndarray]:
    """Loss and d(loss)/d(logit) of a positive vs p_t for each (alpha, gamma).

    Returns ``{"p_t": (N,), "loss": (A, G, N), "grad": (A, G, N)}``, p_t spaced
    evenly on the logit scale over [0.001, 0.999]; ``grad`` is negative (raising the
    logit lowers the loss).
    """
    logit_max = float(np.log(0.999 / 0.001))
    logits = torch.linspace(-logit_max, logit_max, num_points, dtype=torch.float64)
    targets = torch.ones_like(logits)
    loss = np.zeros((len(alphas), len(gammas), num_points))
    grad = np.zeros_like(loss)
    for i, alpha in enumerate(alphas):
        for j, gamma in enumerate(gammas):
            x = logits.clone().requires_grad_(True)
            values = sigmoid_focal_loss(x, targets, alpha=alpha, gamma=gamma)
            (dx,) = torch.autograd.grad(values.sum(), x)
            loss[i, j] = values.detach().numpy()
            grad[i, j] = dx.numpy()
    return {"p_t": torch.sigmoid(logits).numpy(), "loss": loss, "grad": grad}


def plot_focal_curves(
    curves: dict[str, np.ndarray],
    alphas: Sequence[float],
    gammas: Sequence[float],
    out: str | Path,
) -> Path:
    """Rows: loss, |gradient|; one column per alpha; one line per gamma."""
    p_t = curves["p_t"]
    cols = len(alphas)
    fig, axes = plt.subplots(2, cols, figsize=(4.6 * cols, 7.5), squeeze=False, sharex=True)
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(gammas)))
    for i, alpha in enumerate(alphas):
        for j, gamma in enumerate(gammas):
            label = f"γ = {gamma:g}" + (" (cross-entropy)" if gamma == 0 else "")
            axes[0, i].plot(p_t, curves["loss"][i, j], color=colours[j], label=label)
            axes[1, i].plot(p_t, np.abs(curves["grad"][i, j]), color=colours[j], label=label)
        axes[0, i].set_title(f"α = {alpha:g} (a negative uses 1 − α = {1 - alpha:g})")
        axes[0, i].set_ylabel("loss")
        axes[1, i].set_ylabel("|d loss / d logit|")
        axes[1, i].set_xlabel("p_t (probability of the true label)")
        for ax in axes[:, i]:
            ax.set_yscale("log")
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3, which="both")
            ax.axvspan(0.6, 1.0, color="grey", alpha=0.08)
        axes[0, i].set_ylim(1e-6, 10)
        axes[1, i].set_ylim(1e-6, 2)
        axes[0, i].text(0.8, 3, "well classified", ha="center", fontsize=8, color="dimgrey")
        axes[0, i].legend(fontsize=8, loc="lower left")
    fig.suptitle("Focal loss FL = −α (1 − p_t)^γ log(p_t) and its gradient, per α and γ")
    fig.tight_layout()
    return save_figure(fig, out)


def focal_table(curves: dict[str, np.ndarray], alphas, gammas) -> str:
    """Loss at p_t = 0.1 / 0.5 / 0.9 and the down-weighting of an easy example vs cross-entropy."""
    p_t = curves["p_t"]
    at = [int(np.argmin(np.abs(p_t - p))) for p in (0.1, 0.5, 0.9)]
    ce_easy = -np.log(p_t[at[2]])
    lines = ["alpha  gamma  loss@p_t=0.1  loss@0.5  loss@0.9  easy(0.9)/CE"]
    for i, alpha in enumerate(alphas):
        for j, gamma in enumerate(gammas):
            loss = curves["loss"][i, j]
            lines.append(
                f"{alpha:5g}  {gamma:5g}  {loss[at[0]]:12.4g}  {loss[at[1]]:8.4g}  "
                f"{loss[at[2]]:8.4g}  {loss[at[2]] / ce_easy:12.3g}"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    curves = focal_loss_curves(args.alphas, args.gammas)
    out = plot_focal_curves(curves, args.alphas, args.gammas, args.out)
    print(focal_table(curves, args.alphas, args.gammas))
    print(f"wrote {out}")
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "focal", help="focal loss and its gradient vs p_t over an alpha x gamma grid"
    )
    p.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS))
    p.add_argument("--gammas", type=float, nargs="+", default=list(DEFAULT_GAMMAS))
    p.add_argument("--out", default="focal_loss.png", help="PNG to write")
    p.set_defaults(func=run)
