"""Data-pipeline throughput next to the model's training throughput, in the same run.

For each config (default: ``retinanet/demo`` and ``trees/retinanet_tiles``):

- pipeline img/s: training batches from the config's loader (sampler,
  ``data.train_transforms``, collate) with 0 and 2 DataLoader workers, after
  one warm-up batch (worker start-up and the first image decode excluded);
- model img/s: training steps (forward, loss, backward, optimizer step) of
  the config's detector on batches taken from that loader beforehand, after
  3 warm-up steps, with ``--threads`` threads.

The pipeline is not the bottleneck when its img/s with the workers the
config uses is above the model's.

    python benchmarks/data_pipeline.py [--batches 30] [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from tunedet.config.loader import load_config
from tunedet.data.build import build_dataset
from tunedet.engine.build import build_model, build_optimizer_for, train_loader


def pipeline_rate(cfg, dataset, workers: int, batches: int) -> float:
    it = iter(train_loader(cfg, dataset, num_workers=workers))
    next(it)  # warm-up: worker start, first decode
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += len(next(it))
    rate = images / (time.perf_counter() - start)
    del it
    return rate


def model_rate(cfg, dataset, steps: int) -> float:
    model = build_model(cfg, log=lambda *_: None)
    model.train()
    optimizer = build_optimizer_for(cfg, model)
    it = iter(train_loader(cfg, dataset, num_workers=0))
    batches = [next(it) for _ in range(min(steps, 4))]
    elapsed, images = 0.0, 0
    for step in range(3 + steps):
        batch = batches[step % len(batches)]
        start = time.perf_counter()
        losses = model.loss(batch.images, batch.gt_boxes, batch.gt_labels)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        if step >= 3:
            elapsed += time.perf_counter() - start
            images += len(batch)
    return images / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="retinanet/demo,trees/retinanet_tiles")
    parser.add_argument("--batches", type=int, default=30, help="pipeline batches timed")
    parser.add_argument("--steps", type=int, default=10, help="training steps timed")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads for the model")
    print(
        "| config | batch | pipeline img/s, 0 workers | pipeline img/s, 2 workers | model training img/s |"
    )
    print("|---|---|---|---|---|")
    for name in args.configs.split(","):
        cfg = load_config(name, [])
        dataset = build_dataset(cfg.data.train)
        rates = [pipeline_rate(cfg, dataset, w, args.batches) for w in (0, 2)]
        model = model_rate(cfg, dataset, args.steps)
        print(
            f"| {name} | {cfg.data.batch_size} | {rates[0]:.1f} | {rates[1]:.1f} | {model:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
