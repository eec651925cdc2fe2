"""Parameter importance of a study as a PNG bar chart.

fANOVA (Hutter et al. 2014) when scikit-learn is installed: a random forest from the
parameters to the metric over the completed trials, the metric's variance split into
one share per parameter (conditional keys left out: only keys every completed trial
has are compared). Without scikit-learn, PED-ANOVA (Watanabe et al. 2023): how much
each parameter's distribution in the top quarter of trials differs from all trials
(conditional keys included). Either way a few dozen trials give a rough ranking.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any


def param_importances(study: Any, seed: int = 0) -> tuple[dict[str, float], str]:
    """({key: importance}, largest first, normalised to sum 1; the method's name)."""
    import optuna

    if importlib.util.find_spec("sklearn") is not None:
        evaluator, method = optuna.importance.FanovaImportanceEvaluator(seed=seed), "fANOVA"
    else:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.25)
        method = "PED-ANOVA, top 25%"
    with warnings.catch_warnings():  # PED-ANOVA on a handful of trials warns that its
        warnings.simplefilter("ignore", UserWarning)  # quantiles coincide: ranks are equal
        return optuna.importance.get_param_importances(study, evaluator=evaluator), method


def plot_importances(
    importances: dict[str, float], method: str, metric: str, n_trials: int, out: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(importances)[::-1]  # largest at the top
    values = [importances[k] for k in keys]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(keys) + 1.5), constrained_layout=True)
    bars = ax.barh(keys, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=3)
    ax.set_xlim(0, max([*values, 0.01]) * 1.2)
    ax.set_xlabel(f"importance for {metric} ({method}; sums to 1)")
    ax.set_title(f"parameter importance over {n_trials} completed trials", loc="left")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
