"""``tunedet bench CONFIG [--checkpoint CKPT]``: how fast this model trains and infers here.

Prints one table: training img/s (loss + backward + SGD step on one batch of the config's
training data) and inference img/s on one batch of its validation data for eager
PyTorch, conv-BN folded + channels_last, and ONNX Runtime (dense network exported;
post-processing in torch for all three; RetinaNet only, other detectors print the ONNX
row as n/a with the reason), each path's detections checked equal to eager's
before timing. ``--amp bf16`` (or fp16 on CUDA) adds eager inference under autocast, its
detections compared with eager's (count and largest difference) but not required equal.
Medians over ``--repeats`` with the min–max.
"""

from __future__ import annotations

import argparse
import os
import statistics


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from tunedet.config.loader import load_config
    from tunedet.data.build import build_dataset, build_loader
    from tunedet.deploy.export import raw_export_unsupported
    from tunedet.deploy.speed import (
        amp_path_name,
        describe,
        inference_paths,
        inference_speeds,
        train_step_times,
    )
    from tunedet.engine.amp import check_amp
    from tunedet.engine.build import model_from_checkpoint
    from tunedet.models import build_detector

    cfg = load_config(args.config, args.overrides)
    check_amp(args.amp, torch.device("cpu"), name="--amp")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if args.checkpoint:
        model, _ = model_from_checkpoint(args.checkpoint, "cpu", cfg=cfg)
    else:
        model = build_detector(cfg.model.model_dump())
    batch_size = args.batch_size or cfg.data.batch_size
    train_batch = next(
        iter(
            build_loader(
                build_dataset(cfg.data.train),
                cfg.data.train_transforms,
                seed=cfg.seed,
                batch_size=batch_size,
                size_divisor=cfg.data.size_divisor,
            )
        )
    )
    if cfg.data.val is None:
        raise ValueError("the config has no data.val to time inference on")
    val_batch = next(
        iter(
            build_loader(
                build_dataset(cfg.data.val),
                cfg.data.val_transforms,
                seed=cfg.seed,
                batch_size=batch_size,
                size_divisor=cfg.data.size_divisor,
            )
        )
    )
    height, width = val_batch.images.shape[-2:]
    if height != width:
        raise ValueError(f"inference batch is {height}×{width}: the exported graph is square")
    load = os.getloadavg()
    print(
        f"{args.config}: batch {batch_size}, {height}×{width} px, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, "
        f"load average {load[0]:.2f}"
    )
    train = train_step_times(
        model,
        train_batch.images,
        train_batch.gt_boxes,
        train_batch.gt_labels,
        args.repeats,
        gt_masks=train_batch.gt_masks,
    )
    model.eval()
    no_onnx = None if args.no_onnx else raw_export_unsupported(model)
    paths = inference_paths(
        model, int(height), threads=cfg.threads, onnx=not args.no_onnx and not no_onnx, amp=args.amp
    )
    approximate = (amp_path_name(args.amp),)
    rows = inference_speeds(
        paths, val_batch.images, val_batch.image_sizes, args.repeats, approximate=approximate
    )
    eager = statistics.median(rows["eager"]["times"])
    print(f"{'':28s} {'median [min–max]':>28s}  vs eager  detections vs eager")
    print(f"{'train (loss+backward+step)':28s} {describe(train, len(train_batch)):>28s}")
    for name, row in rows.items():
        ratio = eager / statistics.median(row["times"])
        check = "equal" if name == "eager" else f"equal (max diff {row['max_diff']:.1g})"
        if name in approximate:
            check = (
                f"{row['detections']} vs {rows['eager']['detections']} detections, "
                f"max diff {row['max_diff']:.2g}"
            )
        print(
            f"{'infer ' + name:28s} {describe(row['times'], len(val_batch)):>28s}  {ratio:6.2f}×  {check}"
        )
    if no_onnx:
        print(f"{'infer onnxruntime':28s} {'n/a':>28s}  {no_onnx}")
    return 0


def add_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="train and inference img/s: eager, folded + channels_last, ONNX Runtime"
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--checkpoint", help="weights to load (default: the config's random init)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, help="images per batch (default: data.batch_size)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime path")
    p.add_argument(
        "--amp",
        choices=["none", "bf16", "fp16"],
        default="none",
        help="also time eager inference under this autocast (bf16: CPU or CUDA)",
    )
    p.set_defaults(func=cmd_bench)
