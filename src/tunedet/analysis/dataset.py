"""``tunedet analyze dataset CONFIG``: box size / aspect / per-class histograms, bad-input counts.

Box statistics come from the annotations (no image decoding) for the file
readers and the synthetic shapes, else from reading the items; up to
``--max-images`` items spread over the dataset are used. The bad-input
report (what the reader repaired or skipped, docs/ARCHITECTURE.md) is
printed for each split.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from tunedet.analysis.inputs import (
    add_config_arguments,
    load_config,
    save_figure,
    split_dataset,
    spread_indices,
)


def dataset_boxes(dataset: Any, max_images: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Training boxes ``(N, 4)`` and labels ``(N,)`` of up to ``max_images`` items."""
    indices = spread_indices(len(dataset), max_images)
    if hasattr(dataset, "records") and hasattr(dataset, "items"):  # AnnotatedImageDataset
        from tunedet.data.tiling import crop_to_tile

        boxes, labels = [], []
        for i in indices:
            record_index, tile, _ = dataset.items[i]
            rec = dataset.records[record_index]
            if tile is None:
                boxes.append(rec.boxes[rec.train])
                labels.append(rec.labels[rec.train])
            else:
                cut = crop_to_tile(rec.boxes, rec.labels, tile, dataset.min_visible)
                keep = cut.keep & rec.train[cut.index]
                boxes.append(cut.boxes[keep])
                labels.append(cut.labels[keep])
        return boxes, labels
    if hasattr(dataset, "geometry"):  # SyntheticShapes
        pairs = [dataset.geometry(i) for i in indices]
        return [b for b, _ in pairs], [lab for _, lab in pairs]
    samples = [dataset[i] for i in tqdm(indices, desc="reading items", leave=False, disable=None)]
    return [s["boxes"] for s in samples], [s["labels"] for s in samples]


def box_statistics(boxes: list[np.ndarray], labels: list[np.ndarray], num_classes: int) -> dict:
    """``sqrt(area)``, ``log2(w / h)``, per-class counts and boxes per image."""
    flat = np.concatenate(
        [np.asarray(b, np.float64).reshape(-1, 4) for b in boxes] or [np.zeros((0, 4))]
    )
    w, h = flat[:, 2] - flat[:, 0], flat[:, 3] - flat[:, 1]
    all_labels = np.concatenate(
        [np.asarray(lab, np.int64) for lab in labels] or [np.zeros(0, np.int64)]
    )
    return {
        "size": np.sqrt(w * h),
        "log2_aspect": np.log2(w / h),
        "per_class": np.bincount(all_labels, minlength=num_classes),
        "per_image": np.array([len(b) for b in boxes]),
    }


def plot_statistics(stats: dict, classes: list[str], title: str, out: str | Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), layout="constrained")
    size = stats["size"]
    if len(size):
        bins = np.geomspace(max(size.min(), 0.5), size.max() * 1.001 + 1e-9, 30)
        axes[0, 0].hist(size, bins=bins, color="tab:blue")
        axes[0, 0].set_xscale("log")
        axes[0, 0].xaxis.set_major_formatter(ScalarFormatter())
        axes[0, 0].xaxis.set_minor_formatter(ScalarFormatter())
        axes[0, 0].tick_params(axis="x", which="minor", labelsize=7)
        for edge, name, side in ((32, " small < 32 ", "right"), (96, " large > 96 ", "left")):
            axes[0, 0].axvline(edge, color="grey", ls="--", lw=1)
            top = axes[0, 0].get_ylim()[1] * 0.95
            axes[0, 0].text(edge, top, name, fontsize=7, ha=side, va="top")
        axes[0, 1].hist(stats["log2_aspect"], bins=30, color="tab:orange")
    axes[0, 0].set(xlabel="box size sqrt(w·h) [px]", ylabel="boxes", title="box size")
    axes[0, 1].set(
        xlabel="log2(w / h)  (0 = square, +1 = twice as wide)", ylabel="boxes", title="box aspect"
    )
    axes[1, 0].bar(range(len(classes)), stats["per_class"], color="tab:green")
    axes[1, 0].set_xticks(
        range(len(classes)),
        classes,
        rotation=45 if len(classes) > 6 else 0,
        ha="right" if len(classes) > 6 else "center",
    )
    axes[1, 0].set(ylabel="boxes", title="boxes per class")
    per_image = stats["per_image"]
    axes[1, 1].hist(
        per_image,
        bins=np.arange(per_image.max() + 2 if len(per_image) else 2) - 0.5,
        color="tab:purple",
    )
    axes[1, 1].set(xlabel="boxes in the image", ylabel="images", title="boxes per image")
    fig.suptitle(title)
    return save_figure(fig, out)


def analyze_split(cfg: Any, split: str, max_images: int, out_dir: str | Path) -> tuple[Path, str]:
    """Write ``dataset_<split>.png``; returns it and the printed summary."""
    dataset = split_dataset(cfg, split)
    boxes, labels = dataset_boxes(dataset, max_images)
    stats = box_statistics(boxes, labels, len(dataset.classes))
    used = len(boxes)
    title = f"data.{split}: {used} of {len(dataset)} items, {len(stats['size'])} boxes"
    path = plot_statistics(
        stats, list(dataset.classes), title, Path(out_dir) / f"dataset_{split}.png"
    )
    counts = ", ".join(
        f"{c} {n}" for c, n in zip(dataset.classes, stats["per_class"].tolist(), strict=True)
    )
    report = dataset.report
    lines = [
        title,
        f"  boxes per class: {counts}",
        f"  box size sqrt(w·h): median {np.median(stats['size']):.1f} px"
        if len(stats["size"])
        else "  no boxes",
        f"  bad input: {report.total} problem(s) repaired or skipped"
        + (f"\n    {report.summary().replace(chr(10), chr(10) + '    ')}" if report else ""),
    ]
    return path, "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    splits = ["train", "val"] if args.split == "both" else [args.split]
    for split in splits:
        if split == "val" and cfg.data.val is None:
            print("data.val: none")
            continue
        path, summary = analyze_split(cfg, split, args.max_images, args.out)
        print(summary)
        print(f"  wrote {path}")
    return 0


def add_analyze_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dataset", help="box size / aspect / per-class histograms and bad-input counts"
    )
    add_config_arguments(p)
    p.add_argument("--split", choices=["train", "val", "both"], default="both")
    p.add_argument("--max-images", type=int, default=2000, help="items used (spread evenly)")
    p.add_argument("--out", default="runs/analyze", help="folder for dataset_<split>.png")
    p.set_defaults(func=run)
