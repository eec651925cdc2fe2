"""Pruning: AP vs nonzero parameters vs FLOPs vs CPU latency, before and after fine-tuning.

Trains the demo detector with plain (non-residual) backbone stages, whose stride-2 conv
feeds the next conv of its stage (the chains L1-norm channel pruning can narrow), then for
each method and ratio prunes a copy (``tunedet.deploy.prune``), measures it, fine-tunes it
``--finetune-iters`` steps at a tenth of the lr and measures it again. AP is COCO AP on
``--val-images`` of the demo's validation images; latency is the fastest of ``--repeats`` predictions of
one 128-px image with ``--threads`` threads.

    python benchmarks/pruning_table.py [--train-iters 600] [--finetune-iters 150] [--val-images 200]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from tunedet.cli.main import main as tunedet
from tunedet.cli.prune import load_pruning_input, measure, prune_model
from tunedet.data.build import build_dataset
from tunedet.deploy.prune import finetune

PLAIN = ["model.backbone.residual=false", "train.progress=false", "train.eval_every=0"]


def row(name: str, m: dict, base: dict) -> str:
    return (
        f"| {name} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['params'] / 1e3:.1f}k "
        f"({100 * m['params'] / base['params']:.0f}%) | {m['flops'] / 1e6:.1f} "
        f"({100 * m['flops'] / base['flops']:.0f}%) | {m['latency_ms']:.2f} |"
    )


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-iters", type=int, default=600)
    parser.add_argument("--finetune-iters", type=int, default=150)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-images", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*PLAIN, f"train.max_iters={args.train_iters}"]
        overrides.append(f"data.val.num_images={args.val_images}")
        assert tunedet(["train", "retinanet/demo", *overrides, "--work-dir", f"{tmp}/run"]) == 0
        ckpt = sorted(Path(tmp, "run", "checkpoints").glob("*.pt"))[-1]
        cfg, trained, _ = load_pruning_input(str(ckpt), None, [])
    torch.set_num_threads(args.threads)
    val_set = build_dataset(cfg.data.val)
    base = measure(trained, cfg, val_set, args.repeats)
    print(f"demo detector, plain stages, {args.train_iters} training iterations; fine-tuning "
          f"{args.finetune_iters} iterations at lr {0.1 * cfg.optim.lr:g}")  # fmt: skip
    print("| model | AP | AP50 | nonzero params | MFLOPs | CPU latency (ms) |")
    print("|---|---|---|---|---|---|")
    print(row("trained", base, base), flush=True)
    for method in ("magnitude", "l1-channel"):
        for ratio in args.ratios:
            model = copy.deepcopy(trained)
            masks, _ = prune_model(model, method, ratio)
            print(row(f"{method} {ratio:g}", measure(model, cfg, val_set, args.repeats), base))
            finetune(model, cfg, args.finetune_iters, 0.1 * cfg.optim.lr, torch.device("cpu"),
                     masks, log=lambda _msg: None)  # fmt: skip
            tuned = measure(model, cfg, val_set, args.repeats)
            print(row(f"{method} {ratio:g} + fine-tune", tuned, base), flush=True)


if __name__ == "__main__":
    run()
