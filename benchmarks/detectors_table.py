"""Every one-stage detector's light preset at the same budget on the synthetic data.

Trains each ``<detector>/demo`` config for the same number of iterations (batch 16,
128-px synthetic shapes, seed 0, each preset's own recipe otherwise), scores it on the
same 200 validation images, and prints one Markdown table: AP, AP50, parameters,
GFLOPs of one 128-px forward pass (2 FLOPs per multiply-add), and training img/s
(images over the wall time of iterations 20..N, logged by the trainer; the first
iterations include one-off warm-up). Runs are sequential, with the same threads.

    python benchmarks/detectors_table.py --iters 1200 [--only retinanet,fcos]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from tunedet.analysis.flops import count_params_and_flops
from tunedet.config.loader import load_config
from tunedet.engine.trainer import Trainer
from tunedet.models import build_detector

PRESETS = {
    "retinanet": "retinanet/demo",
    "atss": "atss/demo",
    "fcos": "fcos/demo",
    "onenet": "onenet/demo",
    "yolov3": "yolov3/demo",
    "ssd": "ssd/demo",
}


def params_and_gflops(cfg) -> tuple[int, float]:
    model = build_detector(cfg.model.model_dump())
    images = torch.zeros(1, 3, 128, 128)
    sizes = torch.tensor([[128, 128]])
    whole = count_params_and_flops(model, images, sizes, depth=0)[0]
    return int(whole["params"]), whole["flops"] / 1e9


def train_img_per_s(run: Path, batch_size: int) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [(r["step"], r["time"]) for r in rows if "time" in r and "loss" in r]
    (first_iter, first_time), (last_iter, last_time) = timed[0], timed[-1]
    return batch_size * (last_iter - first_iter) / (last_time - first_time)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=1200)
    parser.add_argument("--only", default=",".join(PRESETS))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    rows = []
    for name in args.only.split(","):
        overrides = [f"train.max_iters={args.iters}", "train.progress=false"]
        if args.threads:
            overrides.append(f"threads={args.threads}")
        cfg = load_config(PRESETS[name], overrides)
        run = Path(tempfile.mkdtemp(prefix=f"det_{name}_"))
        try:
            metrics = Trainer(cfg, run, log=lambda *_: None).train()
            speed = train_img_per_s(run, cfg.data.batch_size)
        finally:
            shutil.rmtree(run, ignore_errors=True)
        params, gflops = params_and_gflops(cfg)
        row = (name, PRESETS[name], metrics["AP"], metrics["AP50"], params, gflops, speed)
        print(json.dumps(row), flush=True)
        rows.append(row)

    print(f"\n{args.iters} iterations of batch 16, 128-px synthetic shapes, seed 0\n")
    print("| detector | config | AP | AP50 | params | GFLOPs (128 px) | train img/s |")
    print("|---|---|---|---|---|---|---|")
    for name, config, ap, ap50, params, gflops, speed in rows:
        print(
            f"| {name} | `{config}` | {ap:.3f} | {ap50:.3f} | {params / 1e6:.3f} M | "
            f"{gflops:.3f} | {speed:.1f} |"
        )


if __name__ == "__main__":
    main()
