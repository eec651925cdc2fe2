"""``tunedet analyze augment CONFIG``: a PNG grid of augmented training samples with their boxes.

The samples are what the training loop would build for the first batches of
an epoch -- the same keys ``(index, epoch, batch)`` from the config's sampler,
so per-batch multi-scale sizes and Mosaic/MixUp partners are the real ones --
through ``data.train_transforms`` without the final ``normalize`` (so the
pixels can be shown).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from tunedet.analysis.draw import draw_detections
from tunedet.analysis.inputs import (
    add_config_arguments,
    image_grid,
    load_config,
    save_figure,
    split_dataset,
)


def augmented_samples(cfg: Any, count: int, epoch: int = 0) -> tuple[list[dict], list[str]]:
    """The first ``count`` augmented training samples of ``epoch`` (no normalize), and the
    class names."""
    from tunedet.data.build import build_train_sampler, build_transforms
    from tunedet.data.loader import TransformedDataset

    dataset = split_dataset(cfg, "train")
    specs = [s for s in cfg.data.train_transforms if s.type != "normalize"]
    augmented = TransformedDataset(dataset, build_transforms(specs), seed=cfg.seed)
    sampler = build_train_sampler(cfg.data, dataset, seed=cfg.seed)
    sampler.start_epoch = epoch
    samples: list[dict] = []
    for batch in sampler:
        samples += [augmented[key] for key in batch[: count - len(samples)]]
        if len(samples) >= count:
            break
    return samples, list(dataset.classes)


def plot_augmented(samples: list[dict], classes: list[str], out: str | Path) -> Path:
    """One tile per sample: the image with its boxes (class colours), file and size above."""
    fig, axes = image_grid(len(samples))
    for ax, sample in zip(axes, samples, strict=True):
        image = np.asarray(sample["image"])
        height, width = image.shape[:2]
        zoom = max(1, 384 // max(height, width))  # small images: enlarge so the labels fit
        big = np.kron(image, np.ones((zoom, zoom, 1), np.uint8)) if zoom > 1 else image
        boxes = (np.asarray(sample["boxes"]) * zoom).tolist()
        ax.imshow(draw_detections(big, boxes, None, sample["labels"], classes, 1))
        name = Path(str(sample["file"])).name
        name = name if len(name) <= 34 else "…" + name[-33:]
        ax.set_title(f"{name}\n{width}x{height}, {len(sample['boxes'])} boxes", fontsize=8)
    fig.suptitle("augmented training samples (data.train_transforms without normalize)")
    return save_figure(fig, out)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    samples, classes = augmented_samples(cfg, args.n, args.epoch)
    out = plot_augmented(samples, classes, args.out)
    print(f"wrote {out} ({len(samples)} samples, epoch {args.epoch})")
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "augment", help="PNG grid of augmented training samples with their boxes"
    )
    add_config_arguments(p)
    p.add_argument("-n", type=int, default=16, help="number of samples (default 16)")
    p.add_argument("--epoch", type=int, default=0, help="epoch whose first batches are shown")
    p.add_argument("--out", default="runs/analyze/augment.png", help="output PNG")
    p.set_defaults(func=run)
