"""Inference img/s of a preset: eager vs conv-BN folded + channels_last vs ONNX Runtime.

    python benchmarks/bench_inference.py [--config retinanet/demo] [--checkpoint CKPT]
        [--batch 16] [--repeats 10] [--threads 2]

One batch of the preset's validation images (its val transforms). The three paths run
the same post-processing in torch after the dense network (top-k per level, decode,
clip, class-wise NMS); the ONNX graph holds the dense network only (backbone, neck,
head), exported from the eager model (ONNX Runtime folds BN itself). Before timing,
each path's detections are checked equal to eager's (same count and labels per image,
boxes and scores within 1e-3). Timed in turns (round-robin), median img/s over
``--repeats`` with min–max. Without ``--checkpoint`` the weights are random (few or no
boxes pass the score threshold, so post-processing is nearly free).
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from tunedet.config.loader import load_config
from tunedet.data.build import build_dataset, build_loader
from tunedet.deploy.speed import describe, inference_paths, inference_speeds
from tunedet.engine.checkpoint import load_checkpoint, load_model_state
from tunedet.models import build_detector

REQUIRED_SPEEDUP = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="retinanet/demo")
    parser.add_argument("--checkpoint")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    torch.manual_seed(cfg.seed)
    model = build_detector(cfg.model.model_dump())
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint, map_location="cpu")
        load_model_state(model, state["ema"]["model"] if "ema" in state else state["model"])
    model.eval()
    loader = build_loader(
        build_dataset(cfg.data.val), cfg.data.val_transforms, seed=0, batch_size=args.batch
    )
    batch = next(iter(loader))
    size = int(batch.images.shape[-1])
    load = os.getloadavg()
    print(
        f"{args.config} ({'weights ' + args.checkpoint if args.checkpoint else 'random init'}), "
        f"batch {args.batch} × {size} px, {args.threads} thread(s), torch {torch.__version__}, "
        f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    paths = inference_paths(model, size, threads=args.threads)
    rows = inference_speeds(paths, batch.images, batch.image_sizes, args.repeats)
    detections = sum(len(d["scores"]) for d in paths["eager"](batch.images, batch.image_sizes))
    eager = statistics.median(rows["eager"]["times"])
    print(f"{'path':26s} {'median [min–max]':>30s}  vs eager  detections ({detections} in all)")
    for name, row in rows.items():
        ratio = eager / statistics.median(row["times"])
        check = "reference" if name == "eager" else f"equal, max diff {row['max_diff']:.1e}"
        print(f"{name:26s} {describe(row['times'], args.batch):>30s}  {ratio:6.2f}×  {check}")
    ort = eager / statistics.median(rows["onnxruntime"]["times"])
    verdict = "ok" if ort >= REQUIRED_SPEEDUP else "BELOW TARGET"
    load = os.getloadavg()
    print(
        f"ONNX Runtime vs eager: {ort:.2f}× (target ≥ {REQUIRED_SPEEDUP}×: {verdict}); "
        f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


if __name__ == "__main__":
    main()
