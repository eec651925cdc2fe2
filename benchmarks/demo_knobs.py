"""AP of the demo recipe with one knob changed at a time, at the same small budget.

Trains the demo recipe (``retinanet/demo``) and each variant for the same number
of iterations with the same seed, evaluates on the same synthetic validation
images, and prints one Markdown table. One run per row: differences of a
point or two are within seed noise.

    python benchmarks/demo_knobs.py --iters 600 [--only baseline,no_warmup]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from tunedet.config.loader import load_config
from tunedet.engine.trainer import Trainer

VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("demo recipe: linear warmup + cosine, AdamW, ATSS, GIoU, no EMA", []),
    "no_warmup": ("no warmup", ["schedule.warmup={type: none}"]),
    "step": (
        "step decay (×0.1 at 2/3 and 8/9 of the run) instead of cosine",
        ["schedule.policy={type: multistep, steps: [@S1@, @S2@], gamma: 0.1}"],
    ),
    "sgd": ("SGD momentum 0.9, lr 0.01, wd 1e-4 instead of AdamW", ["optim={type: sgd, lr: 0.01}"]),
    "ema": (
        "EMA of weights (decay 0.999, tau 200) for evaluation",
        ["train.ema={decay: 0.999, tau: 200}"],
    ),
    "max_iou": (
        "max_iou 0.5/0.4 assigner instead of ATSS",
        ["model.assigner={type: max_iou, pos_iou_thr: 0.5, neg_iou_thr: 0.4}"],
    ),
    "smooth_l1": (
        "smooth L1 on deltas instead of GIoU",
        ["model.box_loss={type: smooth_l1}", "model.box_loss_weight=1.0"],
    ),
    "ciou": ("CIoU instead of GIoU", ["model.box_loss={type: ciou}"]),
}


def run(name: str, overrides: list[str], iters: int, work: Path) -> dict[str, float]:
    filled = [
        o.replace("@S1@", str(iters * 2 // 3)).replace("@S2@", str(iters * 8 // 9))
        for o in overrides
    ]
    cfg = load_config(
        "retinanet/demo",
        [f"train.max_iters={iters}", "train.progress=false", "train.ckpt_every=0", *filled],
    )
    start = time.monotonic()
    trainer = Trainer(cfg, work / name, log=lambda *_: None)
    metrics = trainer.train()
    metrics["minutes"] = (time.monotonic() - start) / 60
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--only", help="comma-separated variant names")
    parser.add_argument(
        "--baseline-ap50", type=float, help="baseline AP50 from an earlier run (for Δ)"
    )
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(VARIANTS)
    work = Path(tempfile.mkdtemp(prefix="tunedet_knobs_"))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.iters} iterations of batch 16"
    )
    print("| variant | change | AP | AP50 | Δ AP50 vs baseline | minutes |")
    print("|---|---|---|---|---|---|")
    base = args.baseline_ap50
    try:
        for name in names:
            description, overrides = VARIANTS[name]
            m = run(name, overrides, args.iters, work)
            base = m["AP50"] if name == "baseline" else base
            delta = "" if base is None or name == "baseline" else f"{m['AP50'] - base:+.3f}"
            print(
                f"| {name} | {description} | {m['AP']:.3f} | {m['AP50']:.3f} | {delta} | {m['minutes']:.1f} |",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
